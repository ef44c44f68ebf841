"""The PuLID core modules of the golden sets, built from their sidecar JSON (never from literals)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
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


def ca_forward(ca: PerceiverAttentionCA, ids: torch.Tensor, img: torch.Tensor) -> torch.Tensor:
    """The official PerceiverAttentionCA forward (ID tokens (B_id in {1, B}, T, kv_dim), image tokens (B, L, dim))
    on the module's weights: heads split contiguously, k then v in to_kv, no bias, no mask."""
    def split(x):
        return x.view(*x.shape[:2], ca.heads, -1).transpose(1, 2)

    q = split(ca.to_q(ca.norm2(img)))
    k, v = (split(t).expand(q.shape[0], -1, -1, -1) for t in ca.to_kv(ca.norm1(ids)).chunk(2, dim=-1))
    return ca.to_out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2))

