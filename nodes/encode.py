"""PuLID-Flux Encode ID: reference IMAGE batch -> ID (+ a preview of the aligned, background-removed faces).
A node of its own, so ComfyUI's cache skips the face models when only the Apply node's inputs change."""

from __future__ import annotations

import comfy.model_management as mm
from comfy_api.latest import io

from .. import encoders
from ..pulid.fusion import FUSIONS
from . import paths
from .types import CATEGORY, EvaClip, FaceAnalysis, Facexlib, Identity, PulidModel


class EncodeIdentity(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PuLIDFluxID_EncodeIdentity",
            display_name="PuLID-Flux Encode ID",
            category=CATEGORY,
            description="Face detection, alignment, background removal, EVA-CLIP and the PuLID ID encoder on one "
                        "or more reference images; several references are fused into one identity.",
            inputs=[
                PulidModel.Input("pulid", tooltip="From 'PuLID-Flux Load Model' (its ID encoder runs here)."),
                EvaClip.Input("eva_clip", tooltip="From 'PuLID-Flux Load EVA-CLIP'."),
                FaceAnalysis.Input("face_analysis", tooltip="From 'PuLID-Flux Load InsightFace'."),
                Facexlib.Input("facexlib", tooltip="From 'PuLID-Flux Load facexlib'."),
                io.Image.Input("image", tooltip="Reference photo(s) of one person; a batch gives several references "
                                                "(use Batch Images to combine photos of different sizes)."),
                io.Combo.Input("face_rule", options=list(encoders.FACE_RULES), default="largest",
                               tooltip="Which face to use when a photo shows several: largest (official) or "
                                       "counted left to right."),
                io.Int.Input("face_index", default=0, min=0, max=64,
                             tooltip="0 = the first face by the rule (the largest, or the leftmost); 1 = the next..."),
                io.Combo.Input("align_source", options=list(encoders.ALIGN_SOURCES), default="facexlib",
                               tooltip="Landmarks for the EVA-CLIP crop of the face chosen above: facexlib (official "
                                       "detector) or insightface. Both encoders always see the same person."),
                io.Combo.Input("fusion", options=list(FUSIONS), default="mean",
                               tooltip="Several references: mean of their ID tokens; weighted mean (fusion_weights); "
                                       "concat (all tokens side by side); per_batch_item (reference i drives latent "
                                       "batch item i); joint (all references through the ID encoder at once, the "
                                       "official multi-image path)."),
                io.String.Input("fusion_weights", default="",
                                tooltip="For fusion 'weighted': one number per reference, e.g. '1, 0.5, 0.5'."),
                io.Boolean.Input("antialias", default=True,
                                 tooltip="Antialiased bicubic resize of the aligned face to the EVA input size (current "
                                         "torchvision's default). Off = plain bicubic, what the official code's "
                                         "pinned torchvision 0.15 does (the ID differs by about 4 %)."),
            ],
            outputs=[Identity.Output(display_name="ID"),
                     io.Image.Output(display_name="faces", tooltip="The aligned faces as EVA-CLIP sees them.")],
        )

    @classmethod
    def execute(cls, pulid, eva_clip, face_analysis, facexlib, image, face_rule, face_index, align_source,
                fusion, fusion_weights, antialias) -> io.NodeOutput:
        try:
            identity, faces = pulid.encode(eva_clip, image, face_analysis, facexlib, fusion, fusion_weights,
                                           face_rule=face_rule, face_index=face_index, align_source=align_source,
                                           antialias=antialias)
        except encoders.ModelFilesError as e:
            raise paths.missing(paths.FACEXLIB, f"{e}: turn on load_detector in 'PuLID-Flux Load facexlib' or "
                                                "choose align_source insightface") from e
        return io.NodeOutput(identity, faces.to(mm.intermediate_device()))
