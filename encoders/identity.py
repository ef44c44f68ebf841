"""``encode_identity``: reference images -> id_cond and EVA hidden states, the inputs of the ID encoder."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from .errors import FaceNotFoundError, ImageInputError, MissingDependencyError, ModelFilesError
from .face_analysis import FACE_RULES, choose_face, no_face_error
from .features import DEFAULT_ANTIALIAS, assemble_id_cond, eva_input, face_features_image
from .image import prepare_images

log = logging.getLogger(__name__)

ALIGN_SOURCES = ("facexlib", "insightface")  # landmarks of the chosen face: facexlib's (official) or insightface's


@dataclass(frozen=True)
class FaceInfo:
    """What happened to one reference image (plain values only)."""

    index: int
    num_faces: int  # faces insightface found
    face_index: int | None  # which of them was used (detection order), None when ArcFace fell back
    bbox: tuple[float, ...] | None  # its x1, y1, x2, y2 in the (<= 1024 px) image
    det_score: float | None
    used_fallback: bool  # ArcFace ran on the aligned crop (official fallback)
    align_source: str  # landmarks actually used: "facexlib" or "insightface"


@dataclass
class IdentityResult:
    """Plain float32 CPU tensors (detached): keeping it alive keeps none of the encoders alive."""

    arcface: torch.Tensor  # (N, 512) raw ArcFace embeddings
    id_cond: torch.Tensor  # (N, 1280) = cat[raw ArcFace, L2(EVA pooled)]
    id_vit_hidden: list[torch.Tensor]  # 5 x (N, 577, 1024)
    faces: torch.Tensor  # (N, 512, 512, 3) in [0, 1]: aligned faces, background white, face gray
    info: list[FaceInfo]
    meta: dict[str, str] = field(default_factory=dict)


def _prepare_face(rgb: np.ndarray, index: int, face_analyzer, aligner, face_rule: str, face_index: int,
                  align_source: str) -> tuple[np.ndarray, np.ndarray, FaceInfo]:
    """Detectors + alignment for one RGB uint8 image -> (aligned BGR 512x512, raw ArcFace (512,), info)."""
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])  # both detectors take BGR
    faces = face_analyzer.detect(bgr)
    chosen = None
    if faces:
        try:
            chosen = choose_face(faces, face_rule, face_index)
        except IndexError as e:
            raise FaceNotFoundError(f"reference image {index}: {e}; lower the face index", index) from e
        if len(faces) > 1:
            log.info("PuLID-Flux: reference image %d has %d faces; rule %r index %d chose face %d at bbox "
                     "(%.0f, %.0f, %.0f, %.0f)", index, len(faces), face_rule, face_index, chosen, *faces[chosen].bbox)
    face = faces[chosen] if chosen is not None else None

    landmarks, used_source = None, align_source
    if align_source == "insightface" and face is not None and face.kps is not None:
        landmarks = face.kps
    else:
        used_source = "facexlib"
        try:  # facexlib's own detection of the chosen face (its centre face when insightface found none)
            landmarks = (aligner.detect_landmarks(bgr) if face is None else
                         aligner.detect_landmarks(bgr, np.stack([f.bbox for f in faces]), chosen))
        except ModelFilesError as e:
            if face is not None:  # align_source="facexlib" without its detector: the real problem
                raise
            raise no_face_error(index, f"insightface detected none, and facexlib's detector is unavailable: {e}") from e
        if landmarks is None and face is not None and face.kps is not None:
            log.warning("PuLID-Flux: facexlib found no face matching insightface's chosen face %d in reference image "
                        "%d; aligning on insightface's landmarks of that face", chosen, index)
            landmarks, used_source = face.kps, "insightface"
    if landmarks is None:
        raise no_face_error(index, "neither insightface nor facexlib detected one")
    try:
        aligned = aligner.align(bgr, landmarks)  # (512, 512, 3) BGR uint8
    except ValueError as e:
        raise FaceNotFoundError(f"reference image {index}: {e}; use a clearer, more frontal photo", index) from e

    if face is not None and face.embedding is not None:
        arcface = face.embedding
    else:
        log.warning("PuLID-Flux: insightface found no face in reference image %d; ArcFace runs on the aligned face",
                    index)
        arcface = face_analyzer.embed_aligned(aligned)
    info = FaceInfo(index=index, num_faces=len(faces), face_index=chosen,
                    bbox=None if face is None else tuple(float(v) for v in face.bbox),
                    det_score=None if face is None else face.score,
                    used_fallback=face is None or face.embedding is None, align_source=used_source)
    return aligned, np.asarray(arcface, np.float32).reshape(-1), info


@torch.no_grad()
def encode_identity(images, *, face_analyzer, aligner, eva, face_rule: str = "largest", face_index: int = 0,
                    align_source: str = "facexlib", antialias: bool = DEFAULT_ANTIALIAS,
                    progress: Callable[[int, int], None] | None = None) -> IdentityResult:
    """A ComfyUI IMAGE batch -> ``IdentityResult``, one row per image (fusing references is the caller's)."""
    if align_source not in ALIGN_SOURCES:
        raise ValueError(f"align_source {align_source!r}: use one of {ALIGN_SOURCES}")
    if face_rule not in FACE_RULES or face_index < 0:
        raise ValueError(f"face rule {face_rule!r} / index {face_index}: use one of {FACE_RULES} and an index >= 0")
    rgbs = prepare_images(images)
    progress = progress or (lambda done, total: None)
    weight = eva.trunk.patch_embed.proj.weight  # the tower runs where its weights are
    arcface, pooled, hidden, previews, info = [], [], [[] for _ in eva.config.tap_blocks], [], []
    for i, rgb in enumerate(rgbs):
        try:
            aligned, emb, face_info = _prepare_face(rgb, i, face_analyzer, aligner, face_rule, face_index, align_source)
            labels = aligner.parse(aligned)
        except (ImageInputError, FaceNotFoundError, ModelFilesError, MissingDependencyError):
            raise
        except Exception as e:  # noqa: BLE001 - onnxruntime / cv2 / torch errors: re-raised with the image index
            raise RuntimeError(f"reference image {i}: face pipeline failed ({type(e).__name__}: {e})") from e
        progress(2 * i + 1, 2 * len(rgbs))
        feats = face_features_image(aligned, labels)  # (1, 3, 512, 512) float32
        pool, taps = eva(eva_input(feats, eva.config.image_size, antialias).to(weight.device, weight.dtype))
        arcface.append(torch.from_numpy(emb))
        pooled.append(pool.float().cpu())  # (1, embed)
        for k, t in enumerate(taps):
            hidden[k].append(t.float().cpu())  # (1, L, width)
        previews.append(feats[0].permute(1, 2, 0))  # (512, 512, 3)
        info.append(face_info)
        progress(2 * i + 2, 2 * len(rgbs))
    arcface = torch.stack(arcface)  # (N, 512) raw
    return IdentityResult(arcface=arcface, id_cond=assemble_id_cond(arcface, torch.cat(pooled)),
                          id_vit_hidden=[torch.cat(h) for h in hidden], faces=torch.stack(previews).clamp(0, 1),
                          info=info, meta={"antialias": str(bool(antialias)), "num_images": str(len(rgbs))})
