"""Identities for the diffusers adapter: from reference images (the pack's insightface + facexlib + EVA-CLIP
encoders, as the ComfyUI Encode node) or from an ID file (the ComfyUI Save ID / Load ID format)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .. import encoders
from ..encoders.face_align import DETECTION_FILE, PARSING_FILE
from ..encoders.face_analysis import ANTELOPEV2_DETECTOR, ANTELOPEV2_RECOGNIZER
from ..pulid.embedding import IDEmbedding
from ..pulid.model import PulidFluxModel


def load_id(path) -> IDEmbedding:
    """An ID saved by ComfyUI's Save ID node (or by ``save_id``): same tokens, uncond ID and metadata."""
    return IDEmbedding.load(path)


def save_id(identity: IDEmbedding, path) -> None:
    """Write the ID file ComfyUI's Load ID node reads."""
    identity.save(path)


def missing_model_files(antelopev2_dir, facexlib_dir, eva_clip_file, align_source: str = "facexlib") -> list[str]:
    """Every model file the image path needs and does not find, as full paths."""
    wanted = [Path(antelopev2_dir, ANTELOPEV2_DETECTOR), Path(antelopev2_dir, ANTELOPEV2_RECOGNIZER),
              Path(facexlib_dir, PARSING_FILE), Path(eva_clip_file)]
    if align_source == "facexlib":
        wanted.insert(3, Path(facexlib_dir, DETECTION_FILE))
    return [str(p) for p in wanted if not p.is_file()]


def _as_image_batch(images) -> torch.Tensor:
    """PIL images / HxWx3 uint8 arrays / a (B, H, W, 3) float tensor -> (B, H, W, 3) float32 in [0, 1]."""
    if isinstance(images, torch.Tensor):
        return images if images.ndim == 4 else images.unsqueeze(0)
    if not isinstance(images, (list, tuple)):
        images = [images]
    arrays = [np.asarray(im.convert("RGB") if hasattr(im, "convert") else im) for im in images]
    if len({a.shape for a in arrays}) != 1:
        return torch.cat([_as_image_batch([a]) for a in arrays])  # prepare_images takes one size per batch
    return torch.from_numpy(np.stack(arrays).astype(np.float32) / 255.0)


def _load_state_dict(path: str) -> dict:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def encode_images(pulid_model: PulidFluxModel, images, *, antelopev2_dir, facexlib_dir, eva_clip_file,
                  device="cpu", face_rule: str = "largest", face_index: int = 0, align_source: str = "facexlib",
                  providers=None) -> IDEmbedding:
    """One identity per reference image (tokens (N, 32, 2048) for N images) with the uncond ID of true CFG.

    Model files are read from the given places and never downloaded; a missing one raises
    encoders.ModelFilesError naming every missing file.
    """
    missing = missing_model_files(antelopev2_dir, facexlib_dir, eva_clip_file, align_source)
    if missing:
        raise encoders.ModelFilesError("PuLID-Flux: missing model file(s): " + ", ".join(missing)
                                       + " (antelopev2 from insightface, facexlib's detection/parsing weights, "
                                         "EVA02_CLIP_L_336_psz14_s6B)")
    eva_clip_file = os.fspath(eva_clip_file)
    tower = encoders.build_eva_clip(_load_state_dict(eva_clip_file), eva_clip_file, device=device)
    encoders.check_pulid_tower(tower.config, eva_clip_file)
    result = encoders.encode_identity(
        _as_image_batch(images), face_analyzer=encoders.load_face_analyzer(antelopev2_dir, providers=providers),
        aligner=encoders.load_face_aligner(facexlib_dir, device=device, need_detector=align_source == "facexlib"),
        eva=tower, face_rule=face_rule, face_index=face_index, align_source=align_source)
    encoder = pulid_model.pulid_encoder
    p = encoder.latents
    with torch.no_grad():
        tokens = encoder(result.id_cond.to(p.device, p.dtype), [h.to(p.device, p.dtype) for h in result.id_vit_hidden])
        uncond = encoder.uncond_id(tower.config.num_tokens)
    return IDEmbedding(tokens=tokens.float().cpu(), uncond=uncond.float().cpu(), meta=dict(result.meta),
                       arcface=result.arcface.float().cpu())
