"""The PuLID core modules of the golden sets, built from their sidecar JSON (never from literals)."""

from __future__ import annotations

import torch
from conftest import import_pack

import_pack()
from comfyui_pulid_flux.pulid.attention import PerceiverAttentionCA  # noqa: E402
from comfyui_pulid_flux.pulid.encoder import IDFormer  # noqa: E402


def build_idformer(g, dtype=torch.float32) -> IDFormer:
    """The `idformer` golden: official constructor + the substituted mapping widths of its sidecar."""
    c = dict(g.meta["constructor"])
    c.pop("class")
    widths = g.meta.get("width_substitution", {})

    def width(prefix: str, default: int) -> int:
        return next((v for k, v in widths.items() if k.startswith(prefix)), default)

    m = IDFormer(**c, id_in_dim=width("id_in_dim", 1280), vit_dim=width("vit_hidden_dim", 1024),
                 mapping_hidden=width("mapping_hidden", 1024), num_vit_taps=len(g.seq("in.id_vit_hidden")))
    m.load_state_dict(g.weights, strict=True)
    return m.to(dtype).eval()


def build_ca(g, dtype=torch.float32) -> PerceiverAttentionCA:
    c = dict(g.meta["constructor"])
    c.pop("class")
    m = PerceiverAttentionCA(**c)
    m.load_state_dict(g.weights, strict=True)
    return m.to(dtype).eval()
