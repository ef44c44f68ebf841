"""Handles: what the PULID and EVA_CLIP sockets carry, each owning the ComfyUI ModelPatchers of its modules
and the verbs the nodes call."""

from __future__ import annotations

import logging

import comfy.model_management as mm
import comfy.model_patcher
import comfy.utils
import torch

from .. import encoders
from ..pulid.config import FLUX_DEV
from ..pulid.embedding import IDEmbedding
from ..pulid.fusion import fuse_tokens, joint_tokens, parse_weights
from ..pulid.model import PulidFluxModel
from .cfg import DEFAULT_CFG_START_STEP
from .patch import apply_pulid_flux

log = logging.getLogger(__name__)


def side_model_dtype(device: torch.device) -> torch.dtype:
    """Storage dtype of the PuLID and EVA weights: bf16 where the device computes it (the official dtype),
    else fp32; never ComfyUI's diffusion-model dtype flags (docs/design.md, "Dtypes")."""
    return torch.bfloat16 if mm.should_use_bf16(device) else torch.float32


def wrap(module: torch.nn.Module, load_device: torch.device | None = None) -> comfy.model_patcher.ModelPatcher:
    """A patcher of core's class for side models (`CoreModelPatcher`, which ComfyUI switches to its dynamic
    patcher under Dynamic VRAM, read at call time; plain ModelPatcher where it does not exist), so a PuLID run
    keeps the dynamic load path. load_device: default the torch device."""
    cls = getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher)
    return cls(module, load_device=load_device or mm.get_torch_device(), offload_device=mm.unet_offload_device())


class EvaClipModel:
    """What the EVA_CLIP socket carries: the tower and its ModelPatcher, loaded whole (a plain-torch module must
    not be split across devices)."""

    def __init__(self, tower: encoders.EvaVisionTower, name: str):
        self.tower, self.name, self.patcher = tower, name, wrap(tower)

    def encode(self, image, face_analysis, facexlib, also_load=(), **options) -> encoders.IdentityResult:
        """Faces, alignment and EVA features of reference images (`encoders.encode_identity` options)."""
        mm.load_models_gpu([*also_load, self.patcher], force_full_load=True)
        bar = comfy.utils.ProgressBar(1)
        return encoders.encode_identity(image, face_analyzer=face_analysis, aligner=facexlib, eva=self.tower,
                                        progress=bar.update_absolute, **options)


class PulidFlux:
    """One loaded PuLID-Flux file."""

    def __init__(self, model: PulidFluxModel, name: str = "PuLID-Flux model"):
        self.model, self.name = model, name
        self.encoder_patcher = wrap(model.pulid_encoder)

    @staticmethod
    def wrap(module: torch.nn.Module, load_device=None) -> comfy.model_patcher.ModelPatcher:
        return wrap(module, load_device)

    def encode(self, eva: EvaClipModel, image, face_analysis, facexlib, fusion: str = "mean",
               fusion_weights: str = "", **options) -> tuple[IDEmbedding, torch.Tensor]:
        """(identity, aligned faces) of reference images: `eva.encode`, the IDFormer, the fusion, the uncond ID."""
        encoder = self.model.pulid_encoder
        widths = (encoder.vit_dim, encoder.id_in_dim - FLUX_DEV.arcface_dim, encoder.num_vit_taps)
        encoders.check_pulid_tower(eva.tower.config, eva.name, widths)
        if fusion == "weighted":  # bad weights fail before the face models run
            parse_weights(fusion_weights, image.shape[0] if image.ndim == 4 else 1)
        result = eva.encode(image, face_analysis, facexlib, also_load=[self.encoder_patcher], **options)
        device, dtype = self.encoder_patcher.load_device, encoder.latents.dtype
        id_cond, hidden = result.id_cond.to(device, dtype), [h.to(device, dtype) for h in result.id_vit_hidden]
        with torch.no_grad():
            if fusion == "joint":
                tokens = joint_tokens(encoder, id_cond, hidden)
            else:
                tokens = fuse_tokens(encoder(id_cond, hidden).float().cpu(), fusion, fusion_weights)
            uncond = encoder.uncond_id(eva.tower.config.num_tokens)
        meta = {**result.meta, "fusion": fusion, "fusion_weights": fusion_weights,
                **{k: str(options[k]) for k in ("face_rule", "face_index", "align_source") if k in options}}
        for info in result.info:
            log.info("PuLID-Flux: reference %d: %d face(s), used %s%s", info.index, info.num_faces,
                     info.face_index, " (ArcFace fallback on the aligned crop)" if info.used_fallback else "")
        identity = IDEmbedding(tokens=tokens.float().cpu(), uncond=uncond.float().cpu(), meta=meta,
                               arcface=result.arcface.float().cpu(), faces=IDEmbedding.thumbnails(result.faces))
        return identity, result.faces

    def apply(self, model, identity, cfg_start_step: int = DEFAULT_CFG_START_STEP, **options):
        """`apply_pulid_flux` (its options) plus the official CFG start; weight 0 returns `model` itself."""
        return apply_pulid_flux(model, self, identity, cfg_start_step=cfg_start_step, **options)
