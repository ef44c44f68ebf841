"""Face + EVA-CLIP encoders: reference images -> the official PuLID-Flux ID inputs (spec §a-b).

Imports only torch / numpy at import time; insightface, onnxruntime, facexlib, cv2 and timm are imported
when a loader runs (a missing one raises ``MissingDependencyError`` naming the pip package). Never
imports ComfyUI or ``pulid``: the ID encoder is passed in as a callable. Nothing is ever downloaded.

Loaders (explicit paths; the nodes layer resolves ComfyUI folders):

* ``load_face_analyzer(folder, *, providers=None, det_size=(640, 640)) -> FaceAnalyzer``
  ``folder`` holds the antelopev2 ``*.onnx`` files flat (scrfd_10g_bnkps.onnx + glintr100.onnx are used).
  Providers: CUDA when onnxruntime offers it, else CPU (logged once; warns when onnxruntime and
  onnxruntime-gpu are both installed). ``FaceAnalyzer.detect(bgr, det_sizes=None) -> list[DetectedFace]``
  (bbox, kps (5, 2), score, raw 512-d ``embedding``); ``.embed_aligned(aligned_bgr) -> (512,)``.
* ``load_face_aligner(folder, *, device="cpu", need_detector=True) -> FaceAligner``
  ``folder`` = facexlib ``model_rootpath`` with ``parsing_bisenet.pth`` and (for the official ``facexlib``
  alignment source) ``detection_Resnet50_Final.pth``. ``parsing_parsenet.pth`` is NOT needed.
  ``.detect_landmarks(bgr) -> (5, 2) | None`` (0.97 threshold, centre face), ``.align(bgr, lmk) -> (512, 512, 3)``,
  ``.parse(aligned_bgr) -> (512, 512)`` labels.
* ``load_eva_clip(path, *, device="cpu", dtype=torch.float32, config=None, expected=None) -> EvaVisionTower``
  Official ``EVA02_CLIP_L_336_psz14_s6B.pt`` (``visual.*``), open_clip safetensors (``visual.trunk.*``) or bare
  timm keys; config inferred from shapes. Pass ``expected=EVA02_CLIP_L_336`` to refuse other model sizes.
  ``tower(x (B, 3, S, S)) -> (pooled (B, 768), hidden 5 x (B, 577, 1024))``; ``tower.config`` (``image_size``,
  ``width``, ``embed_dim``, ``num_tokens``).
  Face analyzer and aligner are shared while alive (same folder -> same object) and released when the
  caller drops them; nothing global keeps any model.

Encoding:

* ``encode_identity(images, *, face_analyzer, aligner, eva, id_encoder=None, uncond_encoder=None,
  face_rule="largest", face_index=0, align_source="facexlib", antialias=True, det_sizes=None, device=None,
  dtype=torch.float32, progress=None) -> IdentityResult``
  ``images``: ComfyUI IMAGE (B, H, W, C) float [0, 1], one (H, W, C) image, or a list (sizes may differ);
  RGB, RGBA (over white) or gray. ``face_rule``: "largest" (index 0 = official) or "left_to_right", with
  ``face_index``. ``align_source``: "facexlib" (official: facexlib's own detector, centre face) or
  "insightface" (the landmarks of the face insightface chose). ``det_sizes``: optional extra detector sizes
  tried when 640 finds nothing. ``id_encoder(id_cond, hidden) -> (N, 32, 2048)`` and
  ``uncond_encoder(num_vit_tokens) -> (1, 32, 2048)`` are called with tensors on ``device`` in ``dtype``
  (device None = the tower's). ``progress(done, total)`` is called per step.
  ``IdentityResult``: ``id_cond`` (N, 1280), ``id_vit_hidden`` 5 x (N, 577, 1024), ``tokens`` (N, 32, 2048) | None,
  ``uncond`` (1, 32, 2048) | None, ``faces`` (N, 512, 512, 3) preview in [0, 1] (white background, gray face),
  ``info`` list of ``FaceInfo`` (num_faces, face_index, bbox, det_score, used_fallback, align_source),
  ``meta``. All float32 CPU tensors, detached.
* Lower level (what the golden tests run): ``prepare_face``, ``identity_from_faces``, ``face_features_image``,
  ``eva_input``, ``assemble_id_cond``, ``bg_mask``, ``choose_face``.

Errors (``errors.py``): ``ModelFilesError`` (FileNotFoundError), ``EvaCheckpointError`` (ValueError),
``ImageInputError`` (ValueError, ``.index``), ``FaceNotFoundError`` (RuntimeError, ``.index``),
``MissingDependencyError`` (ImportError). Any other failure inside one image is a RuntimeError naming its index.
"""

from .errors import (
    EvaCheckpointError,
    FaceNotFoundError,
    ImageInputError,
    MissingDependencyError,
    ModelFilesError,
)
from .eva_clip import EVA02_CLIP_L_336, EvaVisionConfig, EvaVisionTower, load_eva_clip
from .face_align import FaceAligner, load_face_aligner
from .face_analysis import FACE_RULES, DetectedFace, FaceAnalyzer, choose_face, load_face_analyzer
from .features import BG_LABELS, assemble_id_cond, bg_mask, eva_input, face_features_image
from .identity import ALIGN_SOURCES, FaceInfo, IdentityResult, encode_identity, identity_from_faces, prepare_face
from .image import prepare_images

__all__ = [
    "ALIGN_SOURCES",
    "BG_LABELS",
    "EVA02_CLIP_L_336",
    "FACE_RULES",
    "DetectedFace",
    "EvaCheckpointError",
    "EvaVisionConfig",
    "EvaVisionTower",
    "FaceAligner",
    "FaceAnalyzer",
    "FaceInfo",
    "FaceNotFoundError",
    "IdentityResult",
    "ImageInputError",
    "MissingDependencyError",
    "ModelFilesError",
    "assemble_id_cond",
    "bg_mask",
    "choose_face",
    "encode_identity",
    "eva_input",
    "face_features_image",
    "identity_from_faces",
    "load_eva_clip",
    "load_face_aligner",
    "load_face_analyzer",
    "prepare_face",
    "prepare_images",
]
