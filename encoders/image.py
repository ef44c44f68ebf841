"""A ComfyUI IMAGE batch -> RGB uint8 arrays, as the official app feeds its face pipeline."""

from __future__ import annotations

import logging

import numpy as np
import torch

from .errors import ImageInputError, require

log = logging.getLogger(__name__)

# official app_flux.py: resize_numpy_image_long(id_image, 1024), which only scales down
MAX_LONG_SIDE = 1024
# Below this the detectors cannot find a face (SCRFD's smallest anchor is 16 px on the 640 input).
MIN_SIDE = 32
# Larger inputs are refused before any allocation (cv2 and the detectors would thrash memory).
MAX_INPUT_SIDE = 16384


def to_rgb_uint8(img: torch.Tensor, index: int) -> np.ndarray:
    """One (H, W, 3 or 4) float image -> (H, W, 3) uint8 RGB."""
    h, w = img.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise ImageInputError(f"reference image {index} is {w}x{h} pixels, too small to find a face: use a photo "
                              f"of at least {MIN_SIDE}x{MIN_SIDE} (ideally a face of 200+ pixels)", index)
    if max(h, w) > MAX_INPUT_SIDE:
        raise ImageInputError(f"reference image {index} is {w}x{h} pixels, larger than {MAX_INPUT_SIDE} on a side: "
                              "scale it down first (the face pipeline works at 1024 px anyway)", index)
    x = img.detach().to("cpu", torch.float32)
    if not bool(torch.isfinite(x).all()):
        raise ImageInputError(f"reference image {index} contains NaN or infinite values", index)
    x = x.clamp(0.0, 1.0)
    if x.shape[2] == 4:
        log.info("PuLID-Flux: reference image %d has an alpha channel: composited over white", index)
        x = x[:, :, :3] * x[:, :, 3:] + (1.0 - x[:, :, 3:])
    # ComfyUI IMAGE = uint8 / 255: round(x * 255) restores the original bytes exactly
    return x.mul_(255.0).round_().to(torch.uint8).numpy()


def resize_long_side(img: np.ndarray, max_side: int = MAX_LONG_SIDE) -> np.ndarray:
    """Official resize_numpy_image_long: only down-scales, int() truncation, LANCZOS4."""
    h, w = img.shape[:2]
    if max(h, w) <= max_side:
        return img
    cv2 = require("cv2", "opencv-python")
    k = max_side / max(h, w)
    return cv2.resize(img, (int(w * k), int(h * k)), interpolation=cv2.INTER_LANCZOS4)


def prepare_images(images) -> list[np.ndarray]:
    """Every reference image as (H, W, 3) uint8 RGB, long side <= 1024 (official order of operations)."""
    if not (isinstance(images, torch.Tensor) and images.ndim == 4 and images.shape[-1] in (3, 4)
            and images.is_floating_point()):
        what = f"{images.dtype} tensor of shape {tuple(images.shape)}" if isinstance(images, torch.Tensor) else \
            type(images).__name__
        raise ImageInputError(f"reference images must be a ComfyUI IMAGE (batch, height, width, 3) float tensor, "
                              f"got a {what}; connect a Load Image node (or Batch Images for several)")
    if images.shape[0] == 0:
        raise ImageInputError("no reference image given: connect at least one image with a face")
    out = []
    for i in range(images.shape[0]):
        rgb = resize_long_side(to_rgb_uint8(images[i], i))
        if min(rgb.shape[:2]) < MIN_SIDE:
            raise ImageInputError(f"reference image {i} is {rgb.shape[1]}x{rgb.shape[0]} after scaling its long side "
                                  f"to {MAX_LONG_SIDE}: its aspect ratio is too extreme; crop it around the face", i)
        out.append(rgb)
    return out
