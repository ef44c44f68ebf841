"""Input validation for apply_pulid_flux: which MODELs, embeddings and weights PuLID-Flux accepts.

Only Flux.1 is accepted: Flux 2 / Klein, LongCat-Image, Ovis and Chroma share ComfyUI's Flux classes but
not PuLID's geometry (comfyui-newer.md §1). The CA count must follow the official "+1" rule of the model's
own depths, so tiny test models pass with tiny PuLID models and the real 19/38 needs exactly 20 CAs.
ComfyUI objects are only inspected (class names, `params`), never imported.
"""

from __future__ import annotations

import math

from torch import Tensor

from .config import CALayout, ca_layout
from .model import PulidFluxModel


def _is_class(obj, module: str, name: str) -> bool:
    return type(obj).__module__ == module and type(obj).__qualname__ == name


def check_flux_model(model, pulid_model: PulidFluxModel) -> CALayout:
    """Accept only Flux.1 geometry matching the PuLID model; return where its CAs go."""
    base = getattr(model, "model", None)
    dm = getattr(base, "diffusion_model", None)
    found = f"{type(base).__module__}.{type(base).__qualname__} / {type(dm).__module__}.{type(dm).__qualname__}"
    if not (_is_class(base, "comfy.model_base", "Flux") and _is_class(dm, "comfy.ldm.flux.model", "Flux")):
        raise ValueError(
            f"PuLID-Flux needs a Flux.1 MODEL (comfy.model_base.Flux / comfy.ldm.flux.model.Flux), got {found}. "
            f"Load a Flux.1 dev/schnell/Kontext diffusion model (Flux 2, Chroma, LongCat and others are not supported)."
        )
    p = dm.params
    if getattr(p, "global_modulation", False) or getattr(dm, "vector_in", True) is None:
        raise ValueError(f"{found} is a Flux 2-style model (global modulation); PuLID-Flux works with Flux.1 only")
    layout = ca_layout(p.depth, p.depth_single_blocks)
    if p.hidden_size != pulid_model.hidden_size or layout.num_ca != pulid_model.num_ca:
        raise ValueError(
            f"Flux geometry (hidden {p.hidden_size}, {p.depth} double + {p.depth_single_blocks} single blocks -> "
            f"{layout.num_ca} ID cross-attentions) does not match the PuLID model (hidden {pulid_model.hidden_size}, "
            f"{pulid_model.num_ca} cross-attentions); use a PuLID-Flux checkpoint made for this Flux.1 model"
        )
    return layout


def check_weight(weight) -> float:
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
        raise ValueError(f"weight={weight!r} must be a finite number (official range 0 to 3; 1 is the default)")
    return float(weight)


def check_embedding(embedding, pulid_model: PulidFluxModel, uncond_mode: str):
    tokens = getattr(embedding, "tokens", None)
    if not isinstance(tokens, Tensor) or tokens.ndim != 3:
        raise ValueError(f"expected a PuLID ID embedding with tokens (N, T, id_dim), got {type(embedding).__name__}")
    if tokens.shape[-1] != pulid_model.id_dim:
        raise ValueError(
            f"the ID embedding has id_dim {tokens.shape[-1]} but this PuLID model expects {pulid_model.id_dim}: "
            f"the identity was encoded with a different PuLID model; encode it again with this one"
        )
    uncond = embedding.uncond
    if uncond_mode == "uncond_id" and uncond is None:
        raise ValueError(
            "uncond_mode 'uncond_id' needs the embedding's uncond ID (IDFormer on zeros), which this embedding "
            "lacks; encode the identity again, or choose uncond_mode 'none' or 'same'"
        )
    return tokens.detach(), (None if uncond is None else uncond.detach())
