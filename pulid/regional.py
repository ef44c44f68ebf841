"""Regional ID: a ComfyUI MASK as one weight per Flux image token, area-averaged onto the token grid of the call
(docs/design.md, "Masks")."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def check_mask(mask) -> Tensor | None:
    """Validate a ComfyUI MASK at apply time: (H, W) or (B, H, W) float -> (B, H, W) float32 CPU."""
    if mask is None:
        return None
    if not isinstance(mask, Tensor):
        raise ValueError(f"mask must be a ComfyUI MASK tensor (B, H, W) or (H, W), got {type(mask).__name__}")
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    if mask.ndim != 3 or min(mask.shape) == 0:
        raise ValueError(f"mask must have shape (B, H, W) or (H, W), got {tuple(mask.shape)}")
    mask = mask.detach().to(device="cpu", dtype=torch.float32)
    if not bool(torch.isfinite(mask).all()):
        raise ValueError("mask contains NaN or infinite values; use a mask with values between 0 and 1")
    return mask


def check_mask_batch(mask_batch: int, latent_batch: int) -> None:
    if mask_batch not in (1, latent_batch):
        raise ValueError(
            f"PuLID mask batch {mask_batch} matches neither 1 nor the latent batch {latent_batch}: give one mask "
            f"for the whole batch or exactly one mask per latent image"
        )


def token_weights(mask: Tensor, grid: tuple[int, int], device, dtype,
                  latent: tuple[int, int, int] | None = None) -> Tensor:
    """(B_m, H, W) mask -> (B_m, h*w, 1) weights in Flux's (row-major) token order; latent: (h, w, patch) of the
    call, so a token of a padded odd side averages its image pixels only (None: the whole grid)."""
    h, w = grid
    if latent is None:
        pooled = F.adaptive_avg_pool2d(mask.unsqueeze(1).float(), (h, w))  # (B_m, 1, h, w)
    else:
        lh, lw, patch = latent
        pixels = F.adaptive_avg_pool2d(mask.unsqueeze(1).float(), (lh, lw))  # (B_m, 1, lh, lw)
        pad = (0, w * patch - lw, 0, h * patch - lh)  # where Flux pads (bottom / right)
        total = F.avg_pool2d(F.pad(pixels, pad), patch, divisor_override=1)  # (B_m, 1, h, w) sums
        count = F.avg_pool2d(F.pad(torch.ones_like(pixels[:1]), pad), patch, divisor_override=1)
        pooled = total / count
    return pooled.flatten(1).unsqueeze(-1).to(device=device, dtype=dtype)


def token_grid(height: int, width: int, patch_size: int) -> tuple[int, int]:
    """Token grid of a latent (h, w) under Flux's patchify with padding (comfy/ldm/flux/model.py _forward)."""
    return (height + patch_size // 2) // patch_size, (width + patch_size // 2) // patch_size
