"""Reference images -> RGB uint8 arrays, as the official app feeds its face pipeline (spec §a.0).

Accepted: a ComfyUI IMAGE tensor (B, H, W, C) float in [0, 1], one (H, W, C) image, or a list of
those (sizes may differ); numpy arrays too (uint8 or float in [0, 1]). Channels: 3 = RGB, 4 = RGBA
(composited over white: a transparent background becomes the white PuLID background anyway),
1 = gray (repeated), 2 = gray + alpha.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from .errors import ImageInputError, require

log = logging.getLogger(__name__)

# app_flux.py:120 resize_numpy_image_long(id_image, 1024) (pulid/utils.py:72-80): long side capped, down only.
MAX_LONG_SIDE = 1024
# Below this the detectors cannot find a face (SCRFD's smallest anchor is 16 px on the 640 input).
MIN_SIDE = 32
# Larger inputs are refused before any allocation (cv2 and the detectors would thrash memory).
MAX_INPUT_SIDE = 16384
_ROWS_PER_CHUNK = 512


def _as_list(images) -> list:
    if isinstance(images, (list, tuple)):
        out = []
        for im in images:
            out += _as_list(im)
        return out
    if isinstance(images, (torch.Tensor, np.ndarray)):
        if images.ndim == 4:
            return [images[i] for i in range(images.shape[0])]
        if images.ndim in (2, 3):
            return [images]
        raise ImageInputError(
            f"image tensor of shape {tuple(images.shape)}: expected (B, H, W, C), (H, W, C) or (H, W)"
        )
    raise ImageInputError(f"unsupported image type {type(images).__name__}: pass a ComfyUI IMAGE tensor or a list")


def _to_uint8(img: np.ndarray, index: int) -> np.ndarray:
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        return (img.astype(np.float32) / 257.0).round().astype(np.uint8)
    out = np.empty(img.shape, np.uint8)
    for r in range(0, img.shape[0], _ROWS_PER_CHUNK):  # chunked: an 8000x6000 float image stays cheap
        part = img[r:r + _ROWS_PER_CHUNK].astype(np.float32)
        if not np.isfinite(part).all():
            raise ImageInputError(f"reference image {index} contains NaN or infinite values", index)
        # ComfyUI IMAGE = uint8 / 255: round(x * 255) restores the original bytes exactly.
        np.clip(part, 0.0, 1.0, out=part)
        part *= 255.0
        out[r:r + _ROWS_PER_CHUNK] = np.rint(part)
    return out


def to_rgb_uint8(img, index: int = 0) -> np.ndarray:
    """One image (tensor or array, HWC or HW) -> (H, W, 3) uint8 RGB, contiguous."""
    if isinstance(img, torch.Tensor):
        img = img.detach().to("cpu", torch.float32 if img.is_floating_point() else img.dtype).numpy()
    img = np.asarray(img)
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3:
        raise ImageInputError(f"reference image {index} has shape {img.shape}: expected (H, W, C)", index)
    h, w, c = img.shape
    if c not in (1, 2, 3, 4):
        raise ImageInputError(
            f"reference image {index} has {c} channels (shape {img.shape}): expected RGB, RGBA or gray "
            "in channels-last layout (H, W, C)",
            index,
        )
    if min(h, w) < MIN_SIDE:
        raise ImageInputError(
            f"reference image {index} is {w}x{h} pixels, too small to find a face: use a photo of at least "
            f"{MIN_SIDE}x{MIN_SIDE} (ideally a face of 200+ pixels)",
            index,
        )
    if max(h, w) > MAX_INPUT_SIDE:
        raise ImageInputError(
            f"reference image {index} is {w}x{h} pixels, larger than {MAX_INPUT_SIDE} on a side: "
            "scale it down first (the face pipeline works at 1024 px anyway)",
            index,
        )
    if c in (2, 4):
        scale = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(img.dtype, 1.0)
        f = img.astype(np.float32) / scale
        alpha = np.clip(f[:, :, -1:], 0.0, 1.0)
        img = f[:, :, :-1] * alpha + (1.0 - alpha)  # over white, float in [0, 1]
        if c == 4:
            log.info("PuLID: reference image %d has an alpha channel: composited over white", index)
    img = _to_uint8(img, index)
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    return np.ascontiguousarray(img)


def resize_long_side(img: np.ndarray, max_side: int = MAX_LONG_SIDE) -> np.ndarray:
    """Official resize_numpy_image_long: only down-scales, int() truncation, LANCZOS4."""
    h, w = img.shape[:2]
    if max(h, w) <= max_side:
        return img
    cv2 = require("cv2", "opencv-python")
    k = max_side / max(h, w)
    nh, nw = int(h * k), int(w * k)
    return cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LANCZOS4)


def prepare_images(images) -> list[np.ndarray]:
    """Every reference image as (H, W, 3) uint8 RGB, long side <= 1024 (official order of operations)."""
    items = _as_list(images)
    if not items:
        raise ImageInputError("no reference image given: connect at least one image with a face")
    out = []
    for i, im in enumerate(items):
        rgb = resize_long_side(to_rgb_uint8(im, i))
        if min(rgb.shape[:2]) < MIN_SIDE:
            raise ImageInputError(
                f"reference image {i} is {rgb.shape[1]}x{rgb.shape[0]} after scaling its long side to "
                f"{MAX_LONG_SIDE}: its aspect ratio is too extreme; crop it around the face",
                i,
            )
        out.append(rgb)
    return out
