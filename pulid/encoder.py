"""IDFormer: ArcFace + EVA-CLIP features -> 32 ID tokens (official pulid/encoders_transformer.py IDFormer)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .attention import PerceiverAttention


def _mapping(ops, d_in: int, hidden: int, d_out: int, device, dtype) -> nn.Sequential:
    # Linear, LayerNorm, LeakyReLU, Linear, LayerNorm, LeakyReLU, Linear: keys .0 .1 .3 .4 .6
    return nn.Sequential(
        ops.Linear(d_in, hidden, device=device, dtype=dtype),
        ops.LayerNorm(hidden, device=device, dtype=dtype),
        nn.LeakyReLU(),
        ops.Linear(hidden, hidden, device=device, dtype=dtype),
        ops.LayerNorm(hidden, device=device, dtype=dtype),
        nn.LeakyReLU(),
        ops.Linear(hidden, d_out, device=device, dtype=dtype),
    )


def _feed_forward(ops, dim: int, mult: int, device, dtype) -> nn.Sequential:
    # LayerNorm, Linear, GELU (exact erf), Linear: keys .0 .1 .3 (official FeedForward)
    return nn.Sequential(
        ops.LayerNorm(dim, device=device, dtype=dtype),
        ops.Linear(dim, dim * mult, bias=False, device=device, dtype=dtype),
        nn.GELU(),
        ops.Linear(dim * mult, dim, bias=False, device=device, dtype=dtype),
    )


class IDFormer(nn.Module):
    def __init__(self, dim: int, depth: int, dim_head: int, heads: int, num_id_token: int, num_queries: int,
                 output_dim: int, ff_mult: int, id_in_dim: int, vit_dim: int, mapping_hidden: int, num_vit_taps: int,
                 operations=None, device=None, dtype=None):
        super().__init__()
        if depth % num_vit_taps:
            raise ValueError(f"IDFormer depth {depth} must be a multiple of the {num_vit_taps} ViT taps")
        ops = operations or nn
        self.dim, self.num_id_token, self.num_queries = dim, num_id_token, num_queries
        self.output_dim, self.id_in_dim, self.vit_dim = output_dim, id_in_dim, vit_dim
        self.num_vit_taps = num_vit_taps
        self.layers_per_tap = depth // num_vit_taps  # official `self.depth = depth // 5`

        self.latents = nn.Parameter(torch.empty(1, num_queries, dim, device=device, dtype=dtype))
        self.proj_out = nn.Parameter(torch.empty(dim, output_dim, device=device, dtype=dtype))
        self.layers = nn.ModuleList(
            nn.ModuleList([
                PerceiverAttention(dim, dim_head, heads, operations=ops, device=device, dtype=dtype),
                _feed_forward(ops, dim, ff_mult, device, dtype),
            ])
            for _ in range(depth)
        )
        for i in range(num_vit_taps):
            self.add_module(f"mapping_{i}", _mapping(ops, vit_dim, mapping_hidden, dim, device, dtype))
        self.id_embedding_mapping = _mapping(ops, id_in_dim, mapping_hidden, dim * num_id_token, device, dtype)
        if self.latents.device.type != "meta":
            # the official init; real weights always overwrite it
            nn.init.normal_(self.latents, std=dim**-0.5)
            nn.init.normal_(self.proj_out, std=dim**-0.5)

    def forward(self, id_cond: Tensor, vit_hidden: Sequence[Tensor]) -> Tensor:
        """id_cond (B, id_in) or (B, n_img, id_in); vit_hidden: num_vit_taps x (B, L, vit_dim)
        -> ID tokens (B, num_queries, output_dim)."""
        if len(vit_hidden) != self.num_vit_taps:
            raise ValueError(f"IDFormer expects {self.num_vit_taps} ViT hidden states, got {len(vit_hidden)}")
        b = id_cond.shape[0]
        n_img = id_cond.shape[1] if id_cond.ndim == 3 else 1  # official multi-image path (num_duotu)
        latents = self.latents.to(id_cond).repeat(b, 1, 1)  # (B, 32, dim)
        x = self.id_embedding_mapping(id_cond).reshape(b, self.num_id_token * n_img, self.dim)  # (B, 5n, dim)
        latents = torch.cat((latents, x), dim=1)  # (B, 32 + 5n, dim)
        for tap, hidden in enumerate(vit_hidden):
            context = torch.cat((x, getattr(self, f"mapping_{tap}")(hidden)), dim=1)  # (B, 5n + L, dim)
            for attn, ff in self.layers[tap * self.layers_per_tap:(tap + 1) * self.layers_per_tap]:
                latents = attn(context, latents) + latents
                latents = ff(latents) + latents
        return latents[:, :self.num_queries] @ self.proj_out.to(latents)  # (B, 32, output_dim)

    def uncond_id(self, num_vit_tokens: int, batch: int = 1) -> Tensor:
        """The official uncond ID of true CFG: this encoder on zeros of `num_vit_tokens` ViT tokens (not zero)."""
        p = self.latents
        zeros_cond = torch.zeros(batch, self.id_in_dim, device=p.device, dtype=p.dtype)
        zeros_hidden = [torch.zeros(batch, num_vit_tokens, self.vit_dim, device=p.device, dtype=p.dtype)
                        for _ in range(self.num_vit_taps)]
        return self(zeros_cond, zeros_hidden)
