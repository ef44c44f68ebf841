"""Several references into one identity: token fusions, and `joint` (all references through the ID encoder at
once, the official multi-image path; docs/design.md, "Fusion"). Also the one parser of number lists."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

FUSIONS = ("mean", "weighted", "concat", "per_batch_item", "joint")


def parse_numbers(text: str, count: int, name: str, broadcast: bool = False) -> list[float]:
    """'0.5, 1, 1.5' -> one finite float per item (broadcast: or one value for all)."""
    parts = [p.strip() for p in str(text).replace(";", ",").split(",") if p.strip()]
    try:
        values = [float(p) for p in parts]
    except ValueError as e:
        raise ValueError(f"{name} {text!r} is not a comma-separated list of numbers, e.g. '0.5, 1, 1.5'") from e
    if broadcast and len(values) == 1 and count > 1:
        values = values * count
    if len(values) != count:
        raise ValueError(f"{name} {text!r} gives {len(values)} values for {count} images: give one per image, in "
                         f"the images' batch order{' (or one value for all)' if broadcast else ''}")
    bad = [p for p, v in zip(parts, values) if not math.isfinite(v)]
    if bad:
        raise ValueError(f"{name} {text!r}: {', '.join(bad)} is not a finite number; give ordinary numbers such as "
                         f"'1, 0.5'")
    return values


def parse_weights(text: str, count: int) -> list[float]:
    """Fusion weights: one finite, non-negative number per reference, not all zero."""
    weights = parse_numbers(text, count, "fusion_weights")
    if any(w < 0 for w in weights) or not any(w > 0 for w in weights):
        raise ValueError(f"fusion_weights {text!r} must be non-negative numbers that do not all equal 0")
    return weights


def normalise_weights(weights: Sequence[float]) -> list[float]:
    """Weights scaled to sum 1 without overflow (divided by their maximum first)."""
    top = max(weights)
    scaled = [w / top for w in weights]
    total = math.fsum(scaled)
    return [w / total for w in scaled]


def joint_tokens(id_encoder: Callable, id_cond: Tensor, id_vit_hidden: Sequence[Tensor]) -> Tensor:
    """All N references through the ID encoder at once: id_cond (N, id_in), hidden states (N, L, vit) -> (1, 32, D)."""
    n = id_cond.shape[0]
    hidden = [h.reshape(1, n * h.shape[1], h.shape[2]) for h in id_vit_hidden]
    return id_encoder(id_cond.unsqueeze(0), hidden)


def fuse_tokens(tokens: Tensor, mode: str, weights: str = "") -> Tensor:
    """tokens (N, T, D), one row per reference -> mean / weighted (1, T, D), concat (1, N*T, D) or
    per_batch_item (N, T, D: reference i drives latent item i)."""
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
