"""Fusing the ID tokens of several reference images into one identity (pure tensor code)."""

from __future__ import annotations

import torch
from torch import Tensor

FUSIONS = ["mean", "weighted", "concat", "per_batch_item"]


def parse_weights(text: str, count: int) -> list[float]:
    """'1, 0.5, 2' → [1.0, 0.5, 2.0]; must give one non-negative weight per reference, not all zero."""
    parts = [p for p in text.replace(";", ",").split(",") if p.strip()]
    try:
        weights = [float(p) for p in parts]
    except ValueError as e:
        raise ValueError(f"fusion_weights {text!r} is not a comma-separated list of numbers, e.g. '1, 0.5'") from e
    if len(weights) != count:
        raise ValueError(f"fusion_weights {text!r} gives {len(weights)} weights for {count} reference images; "
                         f"give exactly one per image, in batch order")
    if any(w < 0 or w != w for w in weights) or sum(weights) <= 0:
        raise ValueError(f"fusion_weights {text!r} must be non-negative numbers that do not all equal 0")
    return weights


def fuse_tokens(tokens: Tensor, mode: str, weights: str = "") -> Tensor:
    """tokens (N, T, D), one row per reference → the ID tokens handed to the patch.

    mean:           (1, T, D)   average over references (what the peers do for several images)
    weighted:       (1, T, D)   weighted average, weights normalised to sum 1
    concat:         (1, N*T, D) all references side by side; the cross-attention takes any K/V length
    per_batch_item: (N, T, D)   reference i drives latent batch item i (batch size must equal N)
    """
    n = tokens.shape[0]
    if mode == "mean":
        return tokens.mean(dim=0, keepdim=True)
    if mode == "weighted":
        w = torch.tensor(parse_weights(weights, n), dtype=tokens.dtype, device=tokens.device)
        return torch.einsum("n,ntd->td", w / w.sum(), tokens).unsqueeze(0)
    if mode == "concat":
        return tokens.reshape(1, n * tokens.shape[1], tokens.shape[2])
    if mode == "per_batch_item":
        return tokens
    raise ValueError(f"fusion {mode!r}: use one of {FUSIONS}")
