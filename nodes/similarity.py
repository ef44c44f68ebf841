"""Face similarity (likeness) of generated images against an identity or reference photos (likeness/similarity.py)."""

from __future__ import annotations

import logging

import comfy.model_management as mm
import torch
from comfy_api.latest import io, ui

from ..encoders.image import to_rgb_uint8
from ..likeness import similarity as sim
from .types import CATEGORY, FaceAnalysis, Identity

log = logging.getLogger(__name__)


def reference_arcface(face_analysis, identity, reference):
    """(R, D) reference ArcFace embeddings from exactly one of identity / reference images."""
    if (identity is None) == (reference is None):
        raise ValueError("connect exactly one reference to the similarity node: an identity (from Encode or Load "
                         "ID) or reference IMAGEs, not " + ("both" if identity is not None else "neither"))
    if reference is not None:
        return sim.reference_embeddings(face_analysis, reference)
    arcface = getattr(identity, "arcface", None)
    if arcface is None:
        raise ValueError("this identity carries no reference ArcFace embedding (IDs saved by an older version of "
                         "the pack): encode the reference photos again and save the new ID, or connect the "
                         "reference photos to the 'reference_images' input instead")
    return arcface.float().cpu().numpy()


class FaceSimilarity(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PuLIDFluxID_FaceSimilarity",
            display_name="PuLID-Flux Face Similarity",
            category=CATEGORY,
            description="Likeness of generated faces to the reference: cosine between ArcFace embeddings (the "
                        "ID similarity of the PuLID paper). Per image, the best-matching face counts.",
            inputs=[
                FaceAnalysis.Input("face_analysis", tooltip="From 'PuLID-Flux Load InsightFace' (its ArcFace "
                                                            "model gives the embeddings)."),
                io.Image.Input("image", tooltip="The generated image(s); every image of the batch is scored."),
                Identity.Input("identity", optional=True,
                               tooltip="The reference as an identity from Encode or Load ID (it carries the "
                                       "references' ArcFace embeddings). Connect this or 'reference_images', not "
                                       "both."),
                io.Image.Input("reference_images", optional=True,
                               tooltip="The reference as photo(s): the largest face of each is used. Connect this "
                                       "or 'identity', not both."),
                io.Combo.Input("combine", options=list(sim.REFERENCE_MODES), default="mean",
                               tooltip="With several references: mean = mean of the cosines to all references; max = "
                                       "the best-matching reference; per_item = generated image i against "
                                       "reference i."),
            ],
            outputs=[
                io.Float.Output(display_name="similarity", is_output_list=True,
                                tooltip=f"One cosine per generated image (-1 to 1; higher = more alike), a "
                                        f"list: nodes after it run once per value. An image without a detected face gives {sim.NO_FACE_SCORE} and a "
                                        f"warning."),
                io.String.Output(display_name="similarities",
                                 tooltip="The same values as text, comma-separated in batch order (what the "
                                         "Likeness Sheet takes)."),
                io.Image.Output(display_name="annotated",
                                tooltip="Each detected face boxed with its score; the chosen (best) face in green "
                                        "with a '*'."),
                io.String.Output(display_name="summary", tooltip="The one-line summary shown on the node."),
            ],
        )

    @classmethod
    def execute(cls, face_analysis, image, combine, identity=None, reference_images=None) -> io.NodeOutput:
        refs = reference_arcface(face_analysis, identity, reference_images)
        scores = sim.score_images(face_analysis, image, refs, combine)
        for i, s in enumerate(scores):
            if s.chosen is None:
                log.warning("PuLID-Flux: no face found in generated image %d; its similarity is %s",
                            i, sim.NO_FACE_SCORE)
        annotated = torch.stack([
            torch.from_numpy(sim.annotate(to_rgb_uint8(image[i], i), s).copy()).float() / 255.0
            for i, s in enumerate(scores)]).to(mm.intermediate_device())
        values = [float(s.similarity) for s in scores]
        text = sim.summary(scores, combine, len(refs))
        log.info("PuLID-Flux: %s", text)
        # the annotated faces show on the node (any frontend shows "images"); "text" is the summary line, which
        # the current frontend displays for its own text nodes only: wire 'summary' to Preview Any to read it
        shown = {**ui.PreviewImage(annotated, cls=cls).as_dict(), **ui.PreviewText(text).as_dict()}
        return io.NodeOutput(values, ", ".join(f"{v:.4f}" for v in values), annotated, text, ui=shown)
