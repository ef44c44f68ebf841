"""Input checks of apply_pulid_flux."""

from __future__ import annotations

import math

import comfy.ldm.chroma.model
import comfy.ldm.flux.model
import comfy.model_base
from torch import Tensor

from ..pulid.config import CALayout, ca_layout
from ..pulid.model import PulidFluxModel

# (model_base class, diffusion-model class, name for messages); Chroma first, it is a Flux subclass
SUPPORTED = ((comfy.model_base.Chroma, comfy.ldm.chroma.model.Chroma, "Chroma"),
             (comfy.model_base.Flux, comfy.ldm.flux.model.Flux, "Flux.1"))
# Subclasses with another token layout (the ones a ComfyUI version lacks are skipped)
REFUSED = tuple(getattr(comfy.model_base, n) for n in ("ChromaRadiance", "Flux2", "LongCatImage")
                if hasattr(comfy.model_base, n))


def check_pulid(pulid) -> PulidFluxModel:
    """The PulidFluxModel of a PulidFlux handle (`.model`, `.wrap`, `.name`)."""
    model = getattr(pulid, "model", None)
    if not isinstance(model, PulidFluxModel) or not callable(getattr(pulid, "wrap", None)):
        raise ValueError(f"pulid must be the PuLID model handle from 'PuLID-Flux Load Model' (a PulidFlux holding a "
                         f"PulidFluxModel), got {type(pulid).__name__} holding {type(model).__name__}")
    return model


def check_flux_model(model, pulid_model: PulidFluxModel, pulid_name: str = "the PuLID model") -> CALayout:
    """Accept only Flux.1 or Chroma geometry matching the PuLID model; return where its CAs go."""
    base = getattr(model, "model", None)
    dm = getattr(base, "diffusion_model", None)
    found = f"{type(base).__module__}.{type(base).__qualname__} / {type(dm).__module__}.{type(dm).__qualname__}"
    kind = None if isinstance(base, REFUSED) else next(
        (name for base_cls, dm_cls, name in SUPPORTED if isinstance(base, base_cls) and isinstance(dm, dm_cls)), None)
    if kind is None:
        raise ValueError(
            f"PuLID-Flux needs a Flux.1 or Chroma MODEL (comfy.model_base.Flux / comfy.ldm.flux.model.Flux or "
            f"comfy.model_base.Chroma / comfy.ldm.chroma.model.Chroma), got {found}. Load a Flux.1 dev/schnell/Kontext "
            f"or Chroma diffusion model (Flux 2, Klein, LongCat, Chroma Radiance and others are not supported)."
        )
    p = dm.params
    if getattr(p, "global_modulation", False) or (kind == "Flux.1" and getattr(dm, "vector_in", True) is None):
        raise ValueError(f"{found} is a Flux 2-style model (global modulation); PuLID-Flux works with Flux.1 only")
    layout = ca_layout(p.depth, p.depth_single_blocks)
    if p.hidden_size != pulid_model.hidden_size or layout.num_ca != pulid_model.num_ca:
        raise ValueError(
            f"the {kind} model {type(dm).__qualname__} (hidden {p.hidden_size}, {p.depth} double + "
            f"{p.depth_single_blocks} single blocks -> {layout.num_ca} ID cross-attentions) does not fit the PuLID "
            f"model {pulid_name} (hidden {pulid_model.hidden_size}, {pulid_model.num_ca} cross-attentions); use a "
            f"full-size {kind} model (hidden 3072, 19 + 38 blocks) with pulid_flux_v0.9.x, or a PuLID checkpoint "
            f"made for this geometry"
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
    uncond = embedding.uncond  # finiteness: checked where the tables are made (pulid/fold.py prepare_id)
    if uncond_mode == "uncond_id" and uncond is None:
        raise ValueError(
            "uncond_mode 'uncond_id' needs the embedding's uncond ID (IDFormer on zeros), which this embedding "
            "lacks; encode the identity again, or choose uncond_mode 'none' or 'same'"
        )
    # the tensors themselves (not detached copies): prepared tables are cached on their identity
    return tokens, uncond
