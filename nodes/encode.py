"""Encode PuLID-Flux ID: reference IMAGE batch → ID (+ a preview of the aligned, background-removed faces).

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
from ..pulid.patchers import encoder_patcher
from .fusion import FUSIONS, fuse_tokens, joint_tokens, parse_weights
from .types import CATEGORY, EvaClip, FaceAnalysis, Facexlib, Identity, PulidModel

log = logging.getLogger("PuLID-Flux")

FACE_RULES = ["largest", "left_to_right"]
ALIGN_SOURCES = ["facexlib", "insightface"]


def check_compatible(pulid_model, eva_tower, arcface_dim: int) -> None:
    """The EVA tower must produce what this PuLID model's ID encoder was trained on."""
    enc = pulid_model.pulid_encoder
    got = (eva_tower.config.width, arcface_dim + eva_tower.config.embed_dim, len(eva_tower.config.tap_blocks))
    want = (enc.vit_dim, enc.id_in_dim, enc.num_vit_taps)
    if got != want:
        raise ValueError(
            f"EVA-CLIP tower (width {got[0]}, embed {eva_tower.config.embed_dim}, {got[2]} taps) does not fit the "
            f"PuLID model's ID encoder (ViT width {want[0]}, id_cond width {want[1]}, {want[2]} taps): load "
            f"EVA02_CLIP_L_336_psz14_s6B.pt with the PuLID-Flux v0.9.x file"
        )


class EncodePulidFluxID(io.ComfyNode):
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
                io.Combo.Input("face_rule", options=FACE_RULES, default="largest",
                               tooltip="Which face to use when a photo shows several: largest (official) or "
                                       "counted left to right."),
                io.Int.Input("face_index", default=0, min=0, max=64,
                             tooltip="0 = the first face by the rule (the largest, or the leftmost); 1 = the next..."),
                io.Combo.Input("align_source", options=ALIGN_SOURCES, default="facexlib",
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
        pulid_model, tower = pulid.model, eva_clip.model.tower
        check_compatible(pulid_model, tower, FLUX_DEV.arcface_dim)
        if fusion == "weighted":  # bad weights fail before the face models run
            parse_weights(fusion_weights, image.shape[0] if image.ndim == 4 else 1)
        mm.load_models_gpu([encoder_patcher(pulid), eva_clip])  # the IDFormer only; the CAs stay offloaded
        bar = comfy.utils.ProgressBar(1)

        def progress(done: int, total: int) -> None:
            bar.update_absolute(done, total)

        encoder = pulid_model.pulid_encoder
        result = encoders.encode_identity(
            image, face_analyzer=face_analysis, aligner=facexlib, eva=tower, id_encoder=encoder,
            uncond_encoder=encoder.uncond, face_rule=face_rule, face_index=face_index, align_source=align_source,
            antialias=antialias, device=pulid.load_device, dtype=encoder.latents.dtype, progress=progress)
        if fusion == "joint":  # (1, 32, D)
            with torch.no_grad():
                tokens = joint_tokens(encoder, result.id_cond.to(pulid.load_device, encoder.latents.dtype),
                                      [h.to(pulid.load_device, encoder.latents.dtype) for h in result.id_vit_hidden])
        else:
            tokens = fuse_tokens(result.tokens, fusion, fusion_weights)  # (1, T, D) or (N, 32, D)
        meta = {**result.meta, "fusion": fusion, "fusion_weights": fusion_weights, "face_rule": face_rule,
                "face_index": str(face_index), "align_source": align_source}
        identity = IDEmbedding(tokens=tokens.float().cpu(), uncond=result.uncond, meta=meta,
                               arcface=result.id_cond[:, :FLUX_DEV.arcface_dim].float().cpu())  # raw ArcFace
        for info in result.info:
            log.info("PuLID-Flux: reference %d: %d face(s), used %s%s", info.index, info.num_faces,
                     info.face_index, " (ArcFace fallback on the aligned crop)" if info.used_fallback else "")
        faces = result.faces.to(mm.intermediate_device())  # (N, 512, 512, 3)
        return io.NodeOutput(identity, faces)
