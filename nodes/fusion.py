"""Fusing several reference images into one identity (pure tensor code).

``mean`` / ``weighted`` / ``concat`` / ``per_batch_item`` combine the ID tokens the encoder made per reference.
``joint`` feeds all references through the ID encoder at once, as the official multi-image path of
IDFormer.forward does (official encoders_transformer.py IDFormer.forward: a 3-D id_cond (B, n_img, 1280)
gives 5 * n_img ID tokens, concatenated before the ViT features in every layer's context): here the
ViT hidden states of the n references are concatenated along the token axis, so the 32 query latents
attend to every image's ID tokens and every image's EVA patch tokens in one softmax.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

FUSIONS = ["mean", "weighted", "concat", "per_batch_item", "joint"]


def parse_weights(text: str, count: int) -> list[float]:
    """'1, 0.5, 2' → [1.0, 0.5, 2.0]; one finite, non-negative weight per reference, not all zero."""
    parts = [p for p in str(text).replace(";", ",").split(",") if p.strip()]
    try:
        weights = [float(p) for p in parts]
    except ValueError as e:
        raise ValueError(f"fusion_weights {text!r} is not a comma-separated list of numbers, e.g. '1, 0.5'") from e
    if len(weights) != count:
        raise ValueError(f"fusion_weights {text!r} gives {len(weights)} weights for {count} reference images; "
                         f"give exactly one per image, in batch order")
    bad = [p.strip() for p, w in zip(parts, weights) if not math.isfinite(w)]
    if bad:
        raise ValueError(f"fusion_weights {text!r}: {', '.join(bad)} is not a finite number; give ordinary numbers "
                         f"such as '1, 0.5' (only their ratios matter)")
    if any(w < 0 for w in weights) or not any(w > 0 for w in weights):
        raise ValueError(f"fusion_weights {text!r} must be non-negative numbers that do not all equal 0")
    return weights


def normalise_weights(weights: Sequence[float]) -> list[float]:
    """Weights scaled to sum 1 without overflow: divided by their maximum first (sum of 1e308s stays finite)."""
    top = max(weights)
    scaled = [w / top for w in weights]  # each in [0, 1], so the sum is at most len(weights)
    total = math.fsum(scaled)
    return [w / total for w in scaled]


def joint_tokens(id_encoder: Callable, id_cond: Tensor, id_vit_hidden: Sequence[Tensor]) -> Tensor:
    """All N references through the ID encoder at once: id_cond (N, id_in) → (1, N, id_in); every hidden state
    (N, L, vit) → (1, N * L, vit) (reference 0's tokens first). Returns the encoder's (1, 32, D)."""
    n = id_cond.shape[0]
    hidden = [h.reshape(1, n * h.shape[1], h.shape[2]) for h in id_vit_hidden]
    return id_encoder(id_cond.unsqueeze(0), hidden)


def fuse_tokens(tokens: Tensor, mode: str, weights: str = "") -> Tensor:
    """tokens (N, T, D), one row per reference → the ID tokens handed to the patch.

    mean:           (1, T, D)   average over references (what the peers do for several images)
    weighted:       (1, T, D)   weighted average, weights normalised to sum 1
    concat:         (1, N*T, D) all references side by side; the cross-attention takes any K/V length
    per_batch_item: (N, T, D)   reference i drives latent batch item i (batch size must equal N)
    joint is not a token fusion: see ``joint_tokens``.
    """
    n = tokens.shape[0]
    if mode == "mean":
        return tokens.mean(dim=0, keepdim=True)
    if mode == "weighted":
        w = torch.tensor(normalise_weights(parse_weights(weights, n)), dtype=torch.float64)
        return torch.einsum("n,ntd->td", w.to(tokens.device, tokens.dtype), tokens).unsqueeze(0)
    if mode == "concat":
        return tokens.reshape(1, n * tokens.shape[1], tokens.shape[2])
    if mode == "per_batch_item":
        return tokens
    if mode == "joint":
        raise ValueError("fusion 'joint' runs the ID encoder on all references: use joint_tokens()")
    raise ValueError(f"fusion {mode!r}: use one of {FUSIONS}")
