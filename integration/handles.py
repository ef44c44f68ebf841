"""Handles: what the PULID and EVA_CLIP sockets carry, each owning the ComfyUI ModelPatchers of its modules."""

from __future__ import annotations

import comfy.model_management as mm
import comfy.model_patcher
import torch

from .. import encoders
from ..pulid.model import PulidFluxModel


def side_model_dtype(device: torch.device) -> torch.dtype:
    """Storage dtype of the PuLID and EVA weights: bf16 where the device computes it (the official dtype),
    else fp32 (the goldens' dtype; always on the CPU). Never ComfyUI's diffusion-model dtype flags
    (--fp8_e4m3fn-unet, --fp16-unet, ...): they are for Flux, and fp8 side models break the ID."""
    return torch.bfloat16 if mm.should_use_bf16(device) else torch.float32


def wrap(module: torch.nn.Module, load_device: torch.device | None = None) -> comfy.model_patcher.ModelPatcher:
    """A patcher of core's class for side models (`CoreModelPatcher`, which ComfyUI switches to its dynamic
    patcher under Dynamic VRAM, read at call time; plain ModelPatcher where it does not exist), so a PuLID run
    keeps the dynamic load path. load_device: default the torch device."""
    cls = getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher)
    return cls(module, load_device=load_device or mm.get_torch_device(), offload_device=mm.unet_offload_device())


class PulidFlux:
    """One loaded PuLID-Flux file. model: the PulidFluxModel (weights on the offload device); name: the file
    name, for messages; encoder_patcher: the IDFormer's patcher, what Encode loads (sampling loads only the ID
    tables built with `wrap`, never the cross-attention weights)."""

    def __init__(self, model: PulidFluxModel, name: str = "PuLID-Flux model"):
        self.model, self.name = model, name
        self.encoder_patcher = wrap(model.pulid_encoder)

    @staticmethod
    def wrap(module: torch.nn.Module) -> comfy.model_patcher.ModelPatcher:
        return wrap(module)


class EvaClipModel:
    """What the EVA_CLIP socket carries: the tower and its ModelPatcher, loaded whole (force_full_load):
    a plain-torch module must not be split across devices."""

    def __init__(self, tower: encoders.EvaVisionTower, name: str):
        self.tower, self.name, self.patcher = tower, name, wrap(tower)
