"""``encode_identity``: reference images -> id_cond, EVA hidden states, ID tokens (spec §a-b, pipeline_flux.py:119-194).

Per image (official order): RGB uint8, long side <= 1024 -> BGR -> insightface faces (rule-chosen face,
raw ArcFace embedding) and facexlib alignment (512 FFHQ crop) -> BiSeNet parsing -> white background,
gray face -> resize + normalise -> EVA tower (pooled, 5 taps). ArcFace falls back to the aligned crop when
insightface finds no face. The ID encoder is injected (``id_encoder(id_cond, hidden)``), so this package
never imports ``pulid``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .errors import FaceNotFoundError, ImageInputError, MissingDependencyError, ModelFilesError
from .face_analysis import FACE_RULES, DetectedFace, choose_face, no_face_error
from .features import DEFAULT_ANTIALIAS, assemble_id_cond, eva_input, face_features_image
from .image import prepare_images

log = logging.getLogger(__name__)

ALIGN_SOURCES = ("facexlib", "insightface")  # facexlib = official (centre face); insightface = its chosen face


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
class PreparedFace:
    """One reference after the detectors: what the tensor part of the pipeline needs."""

    aligned_bgr: np.ndarray  # (512, 512, 3) uint8
    labels: torch.Tensor  # (512, 512) parsing labels
    ante: np.ndarray  # (512,) raw ArcFace embedding
    info: FaceInfo


@dataclass
class IdentityResult:
    """Plain CPU tensors (detached): keeping it alive keeps none of the encoders alive."""

    id_cond: torch.Tensor  # (N, 1280) = cat[raw ArcFace, L2(EVA pooled)], float32
    id_vit_hidden: list[torch.Tensor]  # 5 x (N, 577, 1024), float32
    faces: torch.Tensor  # (N, 512, 512, 3) float [0, 1]: aligned faces, background white, face gray
    info: list[FaceInfo]
    tokens: torch.Tensor | None = None  # (N, 32, 2048) id_encoder(id_cond, hidden), float32
    uncond: torch.Tensor | None = None  # (1, 32, 2048) uncond_encoder(num_vit_tokens), float32
    meta: dict[str, str] = field(default_factory=dict)


def prepare_face(
    rgb: np.ndarray,
    index: int,
    *,
    face_analyzer,
    aligner,
    face_rule: str = "largest",
    face_index: int = 0,
    align_source: str = "facexlib",
    det_sizes: Sequence[tuple[int, int]] | None = None,
) -> PreparedFace:
    """Detectors + alignment + parsing for one RGB uint8 image (long side already <= 1024)."""
    if align_source not in ALIGN_SOURCES:
        raise ValueError(f"align_source {align_source!r}: use one of {ALIGN_SOURCES}")
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])  # both detectors take BGR (pipeline_flux.py:127)
    faces: list[DetectedFace] = face_analyzer.detect(bgr, det_sizes)
    chosen = None
    if faces:
        try:
            chosen = choose_face(faces, face_rule, face_index)
        except IndexError as e:
            raise FaceNotFoundError(f"reference image {index}: {e}; lower the face index", index) from e
        if len(faces) > 1:
            b = faces[chosen].bbox
            log.info(
                "PuLID: reference image %d has %d faces; rule %r index %d chose face %d at bbox (%.0f, %.0f, %.0f, %.0f)",
                index, len(faces), face_rule, face_index, chosen, *b,
            )
    face = faces[chosen] if chosen is not None else None

    landmarks, used_source = None, align_source
    if align_source == "insightface" and face is not None and face.kps is not None:
        landmarks = face.kps
    else:
        used_source = "facexlib"
        try:
            landmarks = aligner.detect_landmarks(bgr)
        except ModelFilesError as e:
            if face is not None:  # align_source="facexlib" without its detector file: the real problem
                raise
            raise no_face_error(index, f"insightface detected none, and facexlib's detector is unavailable: {e}") from e
        if landmarks is None and face is not None and face.kps is not None:
            log.warning("PuLID: facexlib found no face in reference image %d; aligning on insightface's landmarks", index)
            landmarks, used_source = face.kps, "insightface"
    if landmarks is None:
        raise no_face_error(index, "neither insightface nor facexlib detected one")
    try:
        aligned = aligner.align(bgr, landmarks)  # (512, 512, 3) BGR uint8
    except ValueError as e:
        raise FaceNotFoundError(f"reference image {index}: {e}; use a clearer, more frontal photo", index) from e

    if face is not None and face.embedding is not None:
        ante = face.embedding
    else:
        log.warning("PuLID: insightface found no face in reference image %d; ArcFace runs on the aligned face", index)
        ante = face_analyzer.embed_aligned(aligned)
    labels = aligner.parse(aligned)
    info = FaceInfo(
        index=index,
        num_faces=len(faces),
        face_index=chosen,
        bbox=None if face is None else tuple(float(v) for v in face.bbox),
        det_score=None if face is None else face.score,
        used_fallback=face is None or face.embedding is None,
        align_source=used_source,
    )
    return PreparedFace(aligned, labels, np.asarray(ante, np.float32).reshape(-1), info)


@torch.no_grad()
def identity_from_faces(
    prepared: Sequence[PreparedFace],
    *,
    eva,
    id_encoder: Callable | None = None,
    uncond_encoder: Callable | None = None,
    antialias: bool = DEFAULT_ANTIALIAS,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    progress: Callable[[int, int], None] | None = None,
    progress_offset: int = 0,
    progress_total: int | None = None,
) -> IdentityResult:
    """EVA + id_cond + ID encoder for prepared faces (the tensor half of ``encode_identity``)."""
    total = progress_total or len(prepared) + 1
    eva_device, eva_dtype = eva.device, eva.dtype
    device = torch.device(device) if device is not None else eva_device
    pooled, hidden, previews = [], [[] for _ in eva.config.tap_blocks], []
    for n, p in enumerate(prepared):
        feats = face_features_image(p.aligned_bgr, p.labels)  # (1, 3, 512, 512) float32
        x = eva_input(feats, eva.image_size, antialias)  # (1, 3, S, S) normalised, float32
        pool, taps = eva(x.to(eva_device, eva_dtype))  # (1, embed), 5 x (1, L, width)
        pooled.append(pool.float().cpu())
        for k, t in enumerate(taps):
            hidden[k].append(t.float().cpu())
        previews.append(feats[0].permute(1, 2, 0))  # (512, 512, 3)
        if progress:
            progress(progress_offset + n + 1, total)
    ante = torch.from_numpy(np.stack([p.ante for p in prepared]))  # (N, 512) raw, float32
    id_cond = assemble_id_cond(ante, torch.cat(pooled))  # (N, 1280)
    id_vit_hidden = [torch.cat(h) for h in hidden]  # 5 x (N, L, width)
    result = IdentityResult(
        id_cond=id_cond,
        id_vit_hidden=id_vit_hidden,
        faces=torch.stack(previews).clamp(0, 1),
        info=[p.info for p in prepared],
        meta={"antialias": str(bool(antialias)), "num_images": str(len(prepared))},
    )
    if id_encoder is not None:
        tokens = id_encoder(id_cond.to(device, dtype), [h.to(device, dtype) for h in id_vit_hidden])
        result.tokens = tokens.detach().float().cpu()  # (N, 32, 2048)
    if uncond_encoder is not None:
        result.uncond = uncond_encoder(eva.config.num_tokens).detach().float().cpu()  # (1, 32, 2048)
    if progress:
        progress(total, total)
    return result


def encode_identity(
    images,
    *,
    face_analyzer,
    aligner,
    eva,
    id_encoder: Callable | None = None,
    uncond_encoder: Callable | None = None,
    face_rule: str = "largest",
    face_index: int = 0,
    align_source: str = "facexlib",
    antialias: bool = DEFAULT_ANTIALIAS,
    det_sizes: Sequence[tuple[int, int]] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    progress: Callable[[int, int], None] | None = None,
) -> IdentityResult:
    """Reference images -> ``IdentityResult`` (one row per image; fusing several references is the caller's).

    A failing image raises (ImageInputError / FaceNotFoundError / RuntimeError) naming its index; no
    image is ever dropped silently.
    """
    if align_source not in ALIGN_SOURCES:
        raise ValueError(f"align_source {align_source!r}: use one of {ALIGN_SOURCES}")
    if face_rule not in FACE_RULES or face_index < 0:
        raise ValueError(f"face rule {face_rule!r} / index {face_index}: use one of {FACE_RULES} and an index >= 0")
    rgbs = prepare_images(images)
    total = 2 * len(rgbs) + 1
    prepared = []
    for i, rgb in enumerate(rgbs):
        try:
            prepared.append(prepare_face(
                rgb, i, face_analyzer=face_analyzer, aligner=aligner, face_rule=face_rule, face_index=face_index,
                align_source=align_source, det_sizes=det_sizes,
            ))
        except (ImageInputError, FaceNotFoundError, ModelFilesError, MissingDependencyError):
            raise
        except Exception as e:  # noqa: BLE001 - onnxruntime / cv2 / torch errors: re-raised with the image index
            raise RuntimeError(f"reference image {i}: face pipeline failed ({type(e).__name__}: {e})") from e
        if progress:
            progress(i + 1, total)
    return identity_from_faces(
        prepared, eva=eva, id_encoder=id_encoder, uncond_encoder=uncond_encoder, antialias=antialias,
        device=device, dtype=dtype, progress=progress, progress_offset=len(rgbs), progress_total=total,
    )
