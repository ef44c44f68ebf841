"""Custom socket types of the pack. Every name carries the ``PULIDFLUXID_`` tag: the existing ports
already register ``PULIDFLUX``, ``EVA_CLIP`` and ``FACEANALYSIS`` (style.md §3), and equal type names
would let ComfyUI connect their objects to ours."""

from __future__ import annotations

from comfy_api.latest import io

PulidModel = io.Custom("PULIDFLUXID_MODEL")  # ModelPatcher wrapping a pulid.PulidFluxModel
EvaClip = io.Custom("PULIDFLUXID_EVA_CLIP")  # ModelPatcher wrapping an encoders EVA02-CLIP vision tower
FaceAnalysis = io.Custom("PULIDFLUXID_FACE_ANALYSIS")  # insightface antelopev2 analyser (onnxruntime, CPU/GPU)
Facexlib = io.Custom("PULIDFLUXID_FACEXLIB")  # facexlib aligner + BiSeNet parser
Identity = io.Custom("PULIDFLUXID_ID")  # pulid.IDEmbedding

CATEGORY = "PuLID-Flux ID"
CATEGORY_LOADERS = CATEGORY + "/loaders"
CATEGORY_IDENTITY = CATEGORY + "/identity"
