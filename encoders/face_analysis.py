"""insightface antelopev2: face detection (SCRFD) and the raw ArcFace embedding (the official code uses
``face['embedding']``, not ``normed_embedding``); ``embed_aligned`` is its fallback on the facexlib crop."""

from __future__ import annotations

import importlib.metadata
import logging
import os
import warnings
from dataclasses import dataclass

import numpy as np

from .errors import FaceNotFoundError, ModelFilesError, require, shared

log = logging.getLogger(__name__)

DET_SIZE = (640, 640)  # official PuLIDPipeline.__init__: app.prepare(ctx_id=0, det_size=(640, 640))
DET_THRESH = 0.5  # insightface prepare() default used by the official call
ANTELOPEV2_DETECTOR = "scrfd_10g_bnkps.onnx"
ANTELOPEV2_RECOGNIZER = "glintr100.onnx"
# Only these two are used by PuLID; the landmark / gender-age models of the pack are not loaded.
USED_TASKS = ["detection", "recognition"]
FACE_RULES = ("largest", "left_to_right")

PROVIDER_CHOICES = ("auto", "CPU", "CUDA", "ROCM", "CoreML")  # the loader's choices of onnxruntime provider
GPU_ARENA = {"arena_extend_strategy": "kSameAsRequested"}
_logged_providers = False


@dataclass(frozen=True)
class DetectedFace:
    bbox: np.ndarray  # (4,) x1, y1, x2, y2 in pixels of the detector input image
    kps: np.ndarray | None  # (5, 2) left eye, right eye, nose, left mouth, right mouth
    score: float
    embedding: np.ndarray | None  # (512,) raw ArcFace embedding (not L2-normalised)

    @property
    def area(self) -> float:
        return float((self.bbox[2] - self.bbox[0]) * (self.bbox[3] - self.bbox[1]))


def choose_face(faces: list[DetectedFace], rule: str = "largest", index: int = 0) -> int:
    """Index into ``faces`` of the face to use."""
    if rule == "largest":
        order = list(reversed(sorted(range(len(faces)), key=lambda i: faces[i].area)))
    elif rule == "left_to_right":
        order = sorted(range(len(faces)), key=lambda i: float(faces[i].bbox[0]))
    else:
        raise ValueError(f"face rule {rule!r}: use one of {FACE_RULES}")
    if not 0 <= index < len(order):
        raise IndexError(f"face index {index} with rule {rule!r}, but only {len(faces)} faces were found")
    return order[index]


def onnx_providers(choice: str = "auto") -> list[str]:
    """onnxruntime providers for a loader choice (PROVIDER_CHOICES)."""
    global _logged_providers
    if choice not in PROVIDER_CHOICES:
        raise ValueError(f"onnxruntime provider {choice!r}: use one of {PROVIDER_CHOICES}")
    ort = require("onnxruntime")
    available = ort.get_available_providers()
    wanted = [] if choice in ("auto", "CPU") else [f"{choice}ExecutionProvider"]
    providers = [p for p in wanted if p in available] + ["CPUExecutionProvider"]
    if len(providers) <= len(wanted):
        log.warning("PuLID-Flux: onnxruntime %s offers no %s (it offers %s); insightface runs on the CPU",
                    getattr(ort, "__version__", "?"), wanted[0], available)
    if not _logged_providers:
        _logged_providers = True
        log.info("PuLID-Flux: insightface runs with onnxruntime %s providers %s", getattr(ort, "__version__", "?"),
                 providers)
        if all(_installed(name) for name in ("onnxruntime", "onnxruntime-gpu")):
            log.warning("PuLID-Flux: both onnxruntime and onnxruntime-gpu are installed; they overwrite each other and "
                        "the CPU build usually wins. Fix: python -m pip uninstall -y onnxruntime onnxruntime-gpu, then "
                        "python -m pip install onnxruntime-gpu (see the README for the CUDA 12 / 13 versions)")
    return providers


def provider_options(providers: list[str]) -> list[dict]:
    """Per provider: a GPU arena that grows by what is asked for (onnxruntime's default doubles it)."""
    return [dict(GPU_ARENA) if p in ("CUDAExecutionProvider", "ROCMExecutionProvider") else {} for p in providers]


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def check_antelopev2_folder(folder: str | os.PathLike) -> str:
    """The folder, if it holds .onnx files flat; else a ModelFilesError saying what is wrong."""
    folder = os.path.abspath(os.fspath(folder))
    if not os.path.isdir(folder):
        raise ModelFilesError(f"insightface folder {folder!r} does not exist: create it and put {ANTELOPEV2_DETECTOR} "
                              f"and {ANTELOPEV2_RECOGNIZER} directly in it")
    names = sorted(os.listdir(folder))
    if not any(n.endswith(".onnx") for n in names):
        nested = [n for n in names if os.path.isdir(os.path.join(folder, n))
                  and any(f.endswith(".onnx") for f in os.listdir(os.path.join(folder, n)))]
        hint = (f" It has a nested folder {os.path.join(folder, nested[0])!r} with .onnx files: move them up one "
                "level (the zip was extracted one folder too deep).") if nested else ""
        raise ModelFilesError(f"insightface folder {folder!r} holds no .onnx file; expected {ANTELOPEV2_DETECTOR} "
                              f"and {ANTELOPEV2_RECOGNIZER}.{hint}")
    return folder


class FaceAnalyzer:
    """A prepared insightface FaceAnalysis (detector + ArcFace). Build with ``load_face_analyzer``."""

    def __init__(self, app):
        self.app = app
        self.recognizer = app.models["recognition"]  # glintr100: the official handler_ante for the fallback

    def detect(self, bgr: np.ndarray) -> list[DetectedFace]:
        """All faces in a BGR uint8 image, in detection order (each with its raw embedding)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # scikit-image 0.26 'estimate' in norm_crop
            faces = self.app.get(bgr)
        out = []
        for f in faces:
            kps = None if getattr(f, "kps", None) is None else np.asarray(f.kps, np.float32).reshape(5, 2)
            emb = None if getattr(f, "embedding", None) is None else np.asarray(f.embedding, np.float32).copy()
            out.append(DetectedFace(np.asarray(f.bbox, np.float32).copy(), kps, float(f.det_score), emb))
        return out

    def embed_aligned(self, aligned_bgr: np.ndarray) -> np.ndarray:
        """Official fallback: ArcFace ``get_feat`` on the 512x512 facexlib crop (resized to 112, no re-alignment)."""
        return np.asarray(self.recognizer.get_feat(aligned_bgr), np.float32).reshape(-1)  # (512,) raw


def load_face_analyzer(folder: str | os.PathLike, *, providers: list[str] | None = None) -> FaceAnalyzer:
    """insightface FaceAnalysis on the antelopev2 files in ``folder`` (never downloads); shared while alive."""
    folder = check_antelopev2_folder(folder)
    providers = list(providers) if providers else onnx_providers()
    return shared(("insightface", os.path.realpath(folder), tuple(providers)), lambda: _load(folder, providers))


def _load(folder: str, providers: list[str]) -> FaceAnalyzer:
    insightface_app = require("insightface.app", "insightface")
    files = sorted(os.listdir(folder))
    try:
        app = insightface_app.FaceAnalysis(name=folder, root=folder, allowed_modules=USED_TASKS, providers=providers,
                                           provider_options=provider_options(providers))
    except AssertionError as e:  # insightface asserts 'detection' in models, without a message
        raise ModelFilesError(f"insightface found no face detector in {folder!r} (files: {files}); expected "
                              f"{ANTELOPEV2_DETECTOR}") from e
    if "recognition" not in app.models:
        raise ModelFilesError(f"insightface found no recognition model in {folder!r} (files: {files}); expected "
                              f"{ANTELOPEV2_RECOGNIZER}")
    app.prepare(ctx_id=0, det_thresh=DET_THRESH, det_size=DET_SIZE)
    used = app.det_model.session.get_providers()
    if "CUDAExecutionProvider" in providers and "CUDAExecutionProvider" not in used:
        log.warning("PuLID-Flux: onnxruntime could not start CUDA (using %s); check the CUDA / cuDNN versions", used)
    return FaceAnalyzer(app)


def no_face_error(index: int, tried: str) -> FaceNotFoundError:
    return FaceNotFoundError(
        f"no face found in reference image {index} ({tried}). Use a photo where the face is clearly visible, "
        "frontal and at least ~100 pixels wide; crop large group or full-body photos around the face",
        index,
    )
