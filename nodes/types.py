"""Socket types and categories of the pack. Every type name carries the ``PULIDFLUXID_`` tag: older ports
register ``PULIDFLUX``, ``EVA_CLIP`` and ``FACEANALYSIS``, and equal names would let ComfyUI connect their
objects to ours."""

from __future__ import annotations

from comfy_api.latest import io

PulidModel = io.Custom("PULIDFLUXID_MODEL")  # pulid.model.PulidFlux
EvaClip = io.Custom("PULIDFLUXID_EVA_CLIP")  # nodes.loaders.EvaClipModel
FaceAnalysis = io.Custom("PULIDFLUXID_FACE_ANALYSIS")  # encoders.FaceAnalyzer (insightface antelopev2)
Facexlib = io.Custom("PULIDFLUXID_FACEXLIB")  # encoders.FaceAligner (facexlib alignment + BiSeNet)
Identity = io.Custom("PULIDFLUXID_ID")  # pulid.embedding.IDEmbedding

CATEGORY = "PuLID-Flux ID"
CATEGORY_LOADERS = CATEGORY + "/loaders"
CATEGORY_IDENTITY = CATEGORY + "/identity"
