"""Perceiver attention (official encoders_transformer.py): heads split contiguously, the first half of `to_kv`
is k and the second v, no bias, no mask, no residual inside the module. softmax((q·d^-¼)(k·d^-¼)ᵀ) is SDPA's
softmax(q kᵀ / √d)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _split_heads(x: Tensor, heads: int) -> Tensor:
    return x.view(*x.shape[:2], heads, -1).transpose(1, 2)  # (B, L, H*d) -> (B, H, L, d)


class PerceiverAttentionCA(nn.Module):
    """The ID cross-attention's weights (official sizes: dim 3072, 16 heads of 128, kv_dim 2048); pulid/fold.py
    computes it: image tokens (norm2, to_q) attend to the ID tokens (norm1, to_kv), then to_out."""

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


class PerceiverAttention(PerceiverAttentionCA):
    """IDFormer layer: latents attend to cat(context, latents); norm1 on the context, norm2 on the latents."""

    def __init__(self, dim: int, dim_head: int = 64, heads: int = 16, operations=None, device=None, dtype=None):
        super().__init__(dim, dim_head, heads, dim, operations=operations, device=device, dtype=dtype)

    def forward(self, context: Tensor, latents: Tensor) -> Tensor:
        """context (B, N_ctx, dim), latents (B, N_lat, dim) -> (B, N_lat, dim)."""
        context, latents = self.norm1(context), self.norm2(latents)
        q = _split_heads(self.to_q(latents), self.heads)
        k, v = self.to_kv(torch.cat((context, latents), dim=1)).chunk(2, dim=-1)
        out = F.scaled_dot_product_attention(q, _split_heads(k, self.heads), _split_heads(v, self.heads))
        return self.to_out(out.transpose(1, 2).flatten(2))
