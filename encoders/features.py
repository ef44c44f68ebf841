"""Pure-tensor steps between the aligned face and the ID encoder (official pipeline_flux.py
PuLIDPipeline.get_id_embedding): background removal, gray face, EVA input, id_cond."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# BiSeNet (CelebAMask-HQ order) labels turned white, the official bg_label list. Everything else (skin,
# brows, eyes, glasses, nose, mouth, lips, hair) is kept.
BG_LABELS = (0, 16, 18, 7, 8, 9, 14, 15)  # background, cloth, hat, l_ear, r_ear, ear_r (earring), neck, neck_l
GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # official to_gray: ITU-R 601 luma
# the EVA tower's image_mean / image_std (eva_clip constants OPENAI_DATASET_MEAN / STD)
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
# torchvision >= 0.17's resize default (what ComfyUI's torch runs); the official requirements pin
# torchvision 0.15.2, which behaves as False for tensors. The Encode node has the switch.
DEFAULT_ANTIALIAS = True


def bg_mask(labels: torch.Tensor) -> torch.Tensor:
    """(H, W) or (1, 1, H, W) parsing labels -> bool background mask (1, 1, H, W)."""
    labels = labels.reshape(1, 1, *labels.shape[-2:])
    bg = torch.zeros_like(labels, dtype=torch.bool)
    for lab in BG_LABELS:
        bg |= labels == lab
    return bg


def to_gray(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB -> luma repeated to 3 channels."""
    g = GRAY_WEIGHTS[0] * x[:, 0:1] + GRAY_WEIGHTS[1] * x[:, 1:2] + GRAY_WEIGHTS[2] * x[:, 2:3]
    return g.repeat(1, 3, 1, 1)


def aligned_to_tensor(aligned_bgr: np.ndarray) -> torch.Tensor:
    """(H, W, 3) BGR uint8 -> (1, 3, H, W) RGB float32 in [0, 1] (img2tensor(bgr2rgb=True) / 255)."""
    rgb = np.ascontiguousarray(aligned_bgr[:, :, ::-1])
    return torch.from_numpy(rgb).permute(2, 0, 1).float().unsqueeze(0) / 255.0


def face_features_image(aligned_bgr: np.ndarray, labels: torch.Tensor) -> torch.Tensor:
    """Background white, face gray: ``where(bg, 1, to_gray(rgb))`` -> (1, 3, 512, 512) float32 in [0, 1]."""
    x = aligned_to_tensor(aligned_bgr)  # (1, 3, 512, 512)
    bg = bg_mask(labels.to(torch.int64))
    if bg.shape[-2:] != x.shape[-2:]:
        raise ValueError(f"parsing labels {tuple(bg.shape[-2:])} do not match the aligned face {tuple(x.shape[-2:])}")
    return torch.where(bg, torch.ones_like(x), to_gray(x))


def eva_input(features: torch.Tensor, size: int, antialias: bool = DEFAULT_ANTIALIAS) -> torch.Tensor:
    """Resize (bicubic) to the tower's size and normalise with the OpenAI CLIP mean/std -> (B, 3, size, size)."""
    x = F.interpolate(features, size=(size, size), mode="bicubic", align_corners=False, antialias=antialias)
    mean = torch.tensor(OPENAI_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def assemble_id_cond(arcface: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    """cat[raw ArcFace (N, 512), pooled / ||pooled||_2 (N, 768), no eps] -> id_cond (N, 1280)."""
    pooled = pooled.to(arcface.dtype)
    return torch.cat([arcface, pooled / torch.norm(pooled, 2, dim=-1, keepdim=True)], dim=-1)
