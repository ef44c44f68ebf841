"""Face similarity: the cosine between ArcFace embeddings, as the PuLID paper measures ID similarity (per image,
the best-matching face; no face scores NO_FACE_SCORE and never raises). numpy / PIL; docs/design.md, "Likeness"."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..encoders.errors import FaceNotFoundError
from ..encoders.face_analysis import choose_face
from ..encoders.image import prepare_images, to_rgb_uint8
from .sheet import font

NO_FACE_SCORE = 0.0
REFERENCE_MODES = ("mean", "max", "per_item")
CHOSEN_COLOUR, OTHER_COLOUR, NO_FACE_COLOUR = (40, 220, 90), (240, 190, 40), (235, 60, 60)


@dataclass(frozen=True)
class FaceScore:
    bbox: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels of the scored image
    det_score: float
    similarity: float  # cosine against the references, reduced by the mode


@dataclass(frozen=True)
class ImageScore:
    similarity: float  # the chosen face's, or NO_FACE_SCORE
    faces: tuple[FaceScore, ...]
    chosen: int | None  # index into faces of the best-matching face; None = no face


def unit_rows(emb) -> np.ndarray:
    """(N, D) embeddings as float64 unit vectors (ArcFace's raw embeddings are not normalised)."""
    e = np.asarray(emb, np.float64)
    e = e.reshape(1, -1) if e.ndim == 1 else e
    norm = np.linalg.norm(e, axis=1, keepdims=True)
    if not np.isfinite(e).all() or (norm == 0).any():
        raise ValueError("face embeddings must be finite and non-zero to compare them")
    return e / norm


def cosine(a, b) -> np.ndarray:
    """(Na, D) x (Nb, D) -> (Na, Nb) cosine similarities."""
    return unit_rows(a) @ unit_rows(b).T


def reduce_references(cos: np.ndarray, mode: str, item: int) -> np.ndarray:
    """cos (faces, refs) -> (faces,) similarity of each face to the references."""
    if mode == "mean":
        return cos.mean(axis=1)
    if mode == "max":
        return cos.max(axis=1)
    if mode == "per_item":
        return cos[:, item if cos.shape[1] > 1 else 0]
    raise ValueError(f"reference mode {mode!r}: use one of {REFERENCE_MODES}")


def reference_embeddings(analyzer, images) -> np.ndarray:
    """(R, D) raw ArcFace embeddings: the largest face of each reference image."""
    out = []
    for i, rgb in enumerate(prepare_images(images)):
        faces = [f for f in analyzer.detect(np.ascontiguousarray(rgb[:, :, ::-1])) if f.embedding is not None]
        if not faces:
            raise FaceNotFoundError(f"no face found in reference image {i} for the similarity: use a photo where "
                                    "the face is clearly visible and frontal", i)
        out.append(faces[choose_face(faces, "largest", 0)].embedding)
    return np.stack(out).astype(np.float32)


def score_faces(faces: Sequence, references: np.ndarray, mode: str = "mean", item: int = 0) -> ImageScore:
    """Score detected faces (objects with .bbox, .score, .embedding) against (R, D) references."""
    faces = [f for f in faces if f.embedding is not None]
    if not faces:
        return ImageScore(NO_FACE_SCORE, (), None)
    emb = np.stack([f.embedding for f in faces])
    if emb.shape[1] != references.shape[1]:
        raise ValueError(f"the reference ArcFace embeddings have {references.shape[1]} values but this face model "
                         f"gives {emb.shape[1]}: use the face model (antelopev2) the identity was encoded with")
    sims = reduce_references(cosine(emb, references), mode, item)
    scored = tuple(FaceScore(tuple(float(v) for v in f.bbox), float(f.score), float(s)) for f, s in zip(faces, sims))
    chosen = int(np.argmax(sims))
    return ImageScore(scored[chosen].similarity, scored, chosen)


def score_images(analyzer, images, references, mode: str = "mean") -> list[ImageScore]:
    """One ImageScore per generated image (B, H, W, C) in [0, 1], against (R, D) reference embeddings."""
    if mode not in REFERENCE_MODES:
        raise ValueError(f"reference mode {mode!r}: use one of {REFERENCE_MODES}")
    refs = np.asarray(references, np.float32)
    n = len(images)
    if mode == "per_item" and refs.shape[0] not in (1, n):
        raise ValueError(f"reference mode 'per_item' compares generated image i with reference i, but there are "
                         f"{n} generated images and {refs.shape[0]} references; give one reference or one per image")
    out = []
    for i in range(n):
        rgb = to_rgb_uint8(images[i], i)  # full size: boxes are drawn on this image
        out.append(score_faces(analyzer.detect(np.ascontiguousarray(rgb[:, :, ::-1])), refs, mode, i))
    return out


def annotate(rgb: np.ndarray, score: ImageScore) -> np.ndarray:
    """(H, W, 3) uint8 with every face boxed and labelled with its score; the chosen face in green, marked."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(np.ascontiguousarray(rgb))
    d = ImageDraw.Draw(img)
    h, w = rgb.shape[:2]
    size = max(10, min(h, w) // 24)
    face_font, line = font(size), max(1, min(h, w) // 256)
    if score.chosen is None:
        d.text((4, 4), "no face", fill=NO_FACE_COLOUR, font=face_font, stroke_width=1, stroke_fill=(0, 0, 0))
    for k, f in enumerate(score.faces):
        colour = CHOSEN_COLOUR if k == score.chosen else OTHER_COLOUR
        x1, y1, x2, y2 = f.bbox
        d.rectangle((x1, y1, x2, y2), outline=colour, width=line * (3 if k == score.chosen else 1))
        label = f"{'* ' if k == score.chosen else ''}{f.similarity:.3f}"
        d.text((x1 + 2, max(0, y1 - size - 4)), label, fill=colour, font=face_font, stroke_width=1, stroke_fill=(0, 0, 0))
    return np.asarray(img)


def summary(scores: Sequence[ImageScore], mode: str, n_refs: int) -> str:
    """One line: the scores in batch order, their mean, and how many images had no face."""
    vals = ", ".join("no face" if s.chosen is None else f"{s.similarity:.3f}" for s in scores)
    found = [s.similarity for s in scores if s.chosen is not None]
    mean = f"mean {np.mean(found):.3f}" if found else "no face found"
    missing = sum(1 for s in scores if s.chosen is None)
    tail = f"; {missing} image(s) without a face scored {NO_FACE_SCORE}" if missing else ""
    return f"likeness (ArcFace cosine, {mode} of {n_refs} reference(s)): {vals} | {mean}{tail}"
