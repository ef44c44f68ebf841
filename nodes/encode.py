"""Encode PuLID-Flux ID: reference IMAGE batch -> ID (+ a preview of the aligned, background-removed faces).

A node of its own, so ComfyUI's cache skips the face models and the EVA tower when only the Apply node's
weight or timing changes.
"""

from __future__ import annotations

import logging

import comfy.model_management as mm
import comfy.utils
import torch
from comfy_api.latest import io

from .. import encoders
from ..pulid.config import FLUX_DEV
from ..pulid.embedding import IDEmbedding
from . import paths
from .fusion import FUSIONS, fuse_tokens, joint_tokens, parse_weights
from .types import CATEGORY, EvaClip, FaceAnalysis, Facexlib, Identity, PulidModel

log = logging.getLogger(__name__)


def check_compatible(encoder, eva: encoders.EvaVisionConfig, arcface_dim: int = FLUX_DEV.arcface_dim) -> None:
    """The EVA tower must produce what this PuLID model's ID encoder was trained on."""
    got = (eva.width, arcface_dim + eva.embed_dim, len(eva.tap_blocks))
    want = (encoder.vit_dim, encoder.id_in_dim, encoder.num_vit_taps)
    if got != want:
        raise ValueError(
            f"EVA-CLIP tower (width {got[0]}, embed {eva.embed_dim}, {got[2]} taps) does not fit the PuLID model's "
            f"ID encoder (ViT width {want[0]}, id_cond width {want[1]}, {want[2]} taps): load "
            f"{paths.MODEL_FILES[paths.EVA_CLIP].files[0]} with the PuLID-Flux v0.9.x file"
        )


class EncodeIdentity(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PuLIDFluxID_EncodeIdentity",
            display_name="Encode PuLID-Flux ID",
            category=CATEGORY,
            description="Face detection, alignment, background removal, EVA-CLIP and the PuLID ID encoder on one "
                        "or more reference images; several references are fused into one identity.",
            inputs=[
                PulidModel.Input("pulid", tooltip="From 'Load PuLID-Flux Model' (its ID encoder runs here)."),
                EvaClip.Input("eva_clip", tooltip="From 'Load EVA-CLIP (PuLID-Flux)'."),
                FaceAnalysis.Input("face_analysis", tooltip="From 'Load InsightFace (PuLID-Flux)'."),
                Facexlib.Input("facexlib", tooltip="From 'Load facexlib (PuLID-Flux)'."),
                io.Image.Input("image", tooltip="Reference photo(s) of one person; a batch gives several references "
                                                "(use Batch Images to combine photos of different sizes)."),
                io.Combo.Input("face_rule", options=list(encoders.FACE_RULES), default="largest",
                               tooltip="Which face to use when a photo shows several: largest (official) or "
                                       "counted left to right."),
                io.Int.Input("face_index", default=0, min=0, max=64,
                             tooltip="0 = the first face by the rule (the largest, or the leftmost); 1 = the next..."),
                io.Combo.Input("align_source", options=list(encoders.ALIGN_SOURCES), default="facexlib",
                               tooltip="Landmarks for the EVA-CLIP crop: facexlib (official; it takes the face "
                                       "nearest the centre) or insightface (the face chosen above, so both "
                                       "encoders always see the same person in a group photo)."),
                io.Combo.Input("fusion", options=FUSIONS, default="mean",
                               tooltip="Several references: mean of their ID tokens; weighted mean (fusion_weights); "
                                       "concat (all tokens side by side); per_batch_item (reference i drives latent "
                                       "batch item i); joint (all references through the ID encoder at once, the "
                                       "official multi-image path)."),
                io.String.Input("fusion_weights", default="",
                                tooltip="For fusion 'weighted': one number per reference, e.g. '1, 0.5, 0.5'."),
                io.Boolean.Input("antialias", default=True,
                                 tooltip="Antialiased resize of the aligned face to the EVA input size (matches the "
                                         "official torchvision path); off = plain bicubic."),
            ],
            outputs=[Identity.Output(display_name="ID"),
                     io.Image.Output(display_name="faces", tooltip="The aligned faces as EVA-CLIP sees them.")],
        )

    @classmethod
    def execute(cls, pulid, eva_clip, face_analysis, facexlib, image, face_rule, face_index, align_source,
                fusion, fusion_weights, antialias) -> io.NodeOutput:
        encoder = pulid.model.pulid_encoder
        check_compatible(encoder, eva_clip.tower.config)
        if fusion == "weighted":  # bad weights fail before the face models run
            parse_weights(fusion_weights, image.shape[0] if image.ndim == 4 else 1)
        # the IDFormer and EVA only (the CAs stay offloaded); EVA whole, it is plain torch
        mm.load_models_gpu([pulid.encoder_patcher, eva_clip.patcher], force_full_load=True)
        bar = comfy.utils.ProgressBar(1)
        try:
            result = encoders.encode_identity(
                image, face_analyzer=face_analysis, aligner=facexlib, eva=eva_clip.tower, face_rule=face_rule,
                face_index=face_index, align_source=align_source, antialias=antialias, progress=bar.update_absolute)
        except encoders.ModelFilesError as e:
            raise paths.missing(paths.FACEXLIB, f"{e}: turn on load_detector in 'Load facexlib (PuLID-Flux)' or "
                                                "choose align_source insightface") from e
        device, dtype = pulid.encoder_patcher.load_device, encoder.latents.dtype
        id_cond, hidden = result.id_cond.to(device, dtype), [h.to(device, dtype) for h in result.id_vit_hidden]
        with torch.no_grad():
            if fusion == "joint":  # all references through the IDFormer at once: (1, 32, D)
                tokens = joint_tokens(encoder, id_cond, hidden)
            else:
                tokens = fuse_tokens(encoder(id_cond, hidden).float().cpu(), fusion, fusion_weights)
            uncond = encoder.uncond_id(eva_clip.tower.config.num_tokens)
        meta = {**result.meta, "fusion": fusion, "fusion_weights": fusion_weights, "face_rule": face_rule,
                "face_index": str(face_index), "align_source": align_source}
        identity = IDEmbedding(tokens=tokens.float().cpu(), uncond=uncond.float().cpu(), meta=meta,
                               arcface=result.arcface.float().cpu(), faces=IDEmbedding.thumbnails(result.faces))
        for info in result.info:
            log.info("PuLID-Flux: reference %d: %d face(s), used %s%s", info.index, info.num_faces,
                     info.face_index, " (ArcFace fallback on the aligned crop)" if info.used_fallback else "")
        return io.NodeOutput(identity, result.faces.to(mm.intermediate_device()))
