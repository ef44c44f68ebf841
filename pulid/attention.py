"""Perceiver attention: the ID cross-attention added to Flux, and the IDFormer's own layer.

Both follow encoders_transformer.py:29-119 of the official code: heads are split contiguously,
the first half of `to_kv` is k and the second v, no bias, no mask, no residual inside the module.
The official `softmax((q·dh^-¼)(k·dh^-¼)ᵀ)` is `softmax(q kᵀ / √dh)`, which is what SDPA computes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _split_heads(x: Tensor, heads: int) -> Tensor:
    # (B, L, H*dh) -> (B, H, L, dh)
    b, n, _ = x.shape
    return x.view(b, n, heads, -1).transpose(1, 2)


def _merge_heads(x: Tensor) -> Tensor:
    # (B, H, L, dh) -> (B, L, H*dh)
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """SDPA where k/v may have batch 1 and broadcast over q's batch (expand is a view, not a copy)."""
    if k.shape[0] != q.shape[0]:
        k = k.expand(q.shape[0], *k.shape[1:])
        v = v.expand(q.shape[0], *v.shape[1:])
    return F.scaled_dot_product_attention(q, k, v)


class PerceiverAttentionCA(nn.Module):
    """ID cross-attention: image tokens (queries) attend to the 32 ID tokens (keys/values).

    Official defaults (pipeline_flux.py:38): dim=3072 (Flux hidden), dim_head=128, heads=16,
    kv_dim=2048 (IDFormer output). Call order is the official one: ``forward(id_tokens, img)``.
    """

    def __init__(self, dim: int = 3072, dim_head: int = 128, heads: int = 16, kv_dim: int = 2048,
                 operations=None, device=None, dtype=None):
        super().__init__()
        ops = operations or nn
        inner = dim_head * heads
        self.dim, self.dim_head, self.heads, self.kv_dim = dim, dim_head, heads, kv_dim
        self.norm1 = ops.LayerNorm(kv_dim, device=device, dtype=dtype)  # on the ID tokens
        self.norm2 = ops.LayerNorm(dim, device=device, dtype=dtype)  # on the image tokens
        self.to_q = ops.Linear(dim, inner, bias=False, device=device, dtype=dtype)
        self.to_kv = ops.Linear(kv_dim, inner * 2, bias=False, device=device, dtype=dtype)
        self.to_out = ops.Linear(inner, dim, bias=False, device=device, dtype=dtype)

    def project_id(self, id_tokens: Tensor) -> tuple[Tensor, Tensor]:
        """The part that depends on the ID only; cache it for a whole sampling run.

        id_tokens (B_id, N_id, kv_dim) -> k, v each (B_id, heads, N_id, dim_head)
        """
        k, v = self.to_kv(self.norm1(id_tokens)).chunk(2, dim=-1)
        return _split_heads(k, self.heads), _split_heads(v, self.heads)

    def attend(self, img: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """img (B, L, dim), k/v (B_id in {1, B}, heads, N_id, dim_head) -> residual (B, L, dim)."""
        q = _split_heads(self.to_q(self.norm2(img)), self.heads)  # (B, H, L, dh)
        return self.to_out(_merge_heads(attention(q, k, v)))

    def forward(self, id_tokens: Tensor, img: Tensor) -> Tensor:
        return self.attend(img, *self.project_id(id_tokens))


class PerceiverAttention(nn.Module):
    """IDFormer layer: latents attend to cat(context, latents) (encoders_transformer.py:75-119)."""

    def __init__(self, dim: int, dim_head: int = 64, heads: int = 16, operations=None, device=None, dtype=None):
        super().__init__()
        ops = operations or nn
        inner = dim_head * heads
        self.heads = heads
        self.norm1 = ops.LayerNorm(dim, device=device, dtype=dtype)  # on the context
        self.norm2 = ops.LayerNorm(dim, device=device, dtype=dtype)  # on the latents
        self.to_q = ops.Linear(dim, inner, bias=False, device=device, dtype=dtype)
        self.to_kv = ops.Linear(dim, inner * 2, bias=False, device=device, dtype=dtype)
        self.to_out = ops.Linear(inner, dim, bias=False, device=device, dtype=dtype)

    def forward(self, context: Tensor, latents: Tensor) -> Tensor:
        # context (B, N_ctx, dim), latents (B, N_lat, dim) -> (B, N_lat, dim)
        context, latents = self.norm1(context), self.norm2(latents)
        q = _split_heads(self.to_q(latents), self.heads)
        # Keys/values see the context AND the latents themselves (encoders_transformer.py:104-105).
        k, v = self.to_kv(torch.cat((context, latents), dim=1)).chunk(2, dim=-1)
        out = attention(q, _split_heads(k, self.heads), _split_heads(v, self.heads))
        return self.to_out(_merge_heads(out))
