"""Loader nodes: PuLID-Flux model, EVA-CLIP tower, insightface antelopev2, facexlib.

Torch weights get ComfyUI ModelPatchers so its memory manager loads and offloads them. Nothing is ever
downloaded: a missing file is an error naming the folder, the file and its source (paths.MODEL_FILES).
"""

from __future__ import annotations

import logging
import os

import comfy.model_management as mm
import comfy.ops
import comfy.utils
import torch
from comfy_api.latest import io

from .. import encoders
from ..encoders.face_analysis import PROVIDER_CHOICES, onnx_providers
from ..integration.handles import EvaClipModel, PulidFlux, side_model_dtype
from ..pulid.model import PulidFluxModel
from . import paths
from .types import CATEGORY_LOADERS, EvaClip, FaceAnalysis, Facexlib, PulidModel

log = logging.getLogger(__name__)


def read_weights(path: str) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors through ComfyUI's reader (pickles only as weights), with errors a user can act on."""
    name, size = os.path.basename(path), os.path.getsize(path)
    if size == 0:
        raise ValueError(f"PuLID-Flux: {name} is empty (0 bytes): the download was interrupted; download it again")
    try:
        sd = comfy.utils.load_torch_file(path, safe_load=True)
    except Exception as e:  # noqa: BLE001 - safetensors and torch.load raise many types
        kind = "safetensors" if path.lower().endswith(".safetensors") else "weights-only PyTorch"
        raise ValueError(f"PuLID-Flux: {name} ({size} bytes) could not be read as a {kind} file "
                         f"({type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}); "
                         "it is truncated, damaged, of another format, or holds code besides tensors; "
                         "download it again") from e
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"PuLID-Flux: {name} does not hold a state dict of tensors")
    return sd


def load_weights(key: str, name: str, build):
    """``build(state_dict)`` on the file ``name`` of MODEL_FILES[key]; any error names where to get the file."""
    path = paths.find_file(key, name)
    try:
        return build(read_weights(path))
    except ValueError as e:
        raise ValueError(f"{e}. The file to use: {paths.where_to_get(key)}") from e


def _file_input(name: str, key: str, what: str) -> io.Combo.Input:
    entry, options = paths.MODEL_FILES[key], paths.file_names(key)
    return io.Combo.Input(name, options=options, default=entry.files[0] if entry.files[0] in options else None,
                          tooltip=f"{what} in {' or '.join(f'models/{k}/' for k in entry.folders)}: "
                                  f"{entry.files[0]} from {entry.source} ({entry.licence}).")


class ModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PuLIDFluxID_ModelLoader", display_name="PuLID-Flux Load Model", category=CATEGORY_LOADERS,
            description="Loads the PuLID-Flux weights (ID encoder + Flux cross-attentions) from models/pulid/.",
            inputs=[_file_input("pulid_file", paths.PULID, "The PuLID-Flux file")],
            outputs=[PulidModel.Output(display_name="PULID")],
        )

    @classmethod
    def execute(cls, pulid_file) -> io.NodeOutput:
        dtype = side_model_dtype(mm.get_torch_device())
        model = load_weights(paths.PULID, pulid_file, lambda sd: PulidFluxModel.from_state_dict(
            sd, pulid_file, dtype=dtype, device=mm.unet_offload_device(), operations=comfy.ops.manual_cast))
        log.info("PuLID-Flux: loaded %s (%d cross-attentions, id_dim %d, %s)", pulid_file, model.num_ca,
                 model.id_dim, dtype)
        return io.NodeOutput(PulidFlux(model, pulid_file))


class EvaClipLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PuLIDFluxID_EvaClipLoader", display_name="PuLID-Flux Load EVA-CLIP", category=CATEGORY_LOADERS,
            description="Loads the EVA02-CLIP-L-14-336 vision tower (official .pt or open_clip safetensors) from "
                        "models/clip_vision/ (or models/text_encoders/); the text tower is dropped.",
            inputs=[_file_input("eva_file", paths.EVA_CLIP, "The EVA02-CLIP-L-14-336 file")],
            outputs=[EvaClip.Output(display_name="EVA_CLIP")],
        )

    @classmethod
    def execute(cls, eva_file) -> io.NodeOutput:
        dtype = side_model_dtype(mm.get_torch_device())

        def build(sd):
            tower = encoders.build_eva_clip(sd, eva_file, device=mm.unet_offload_device(), dtype=dtype)
            encoders.check_pulid_tower(tower.config, eva_file)
            return tower

        return io.NodeOutput(EvaClipModel(load_weights(paths.EVA_CLIP, eva_file, build), eva_file))


class FaceAnalysisLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        packs = list(paths.insightface_pack_dirs())
        return io.Schema(
            node_id="PuLIDFluxID_FaceAnalysisLoader", display_name="PuLID-Flux Load InsightFace",
            category=CATEGORY_LOADERS,
            description="insightface antelopev2 (face detection + ArcFace) from models/insightface/models/antelopev2/.",
            inputs=[
                io.Combo.Input("model_pack", options=packs if paths.ANTELOPEV2 in packs else [paths.ANTELOPEV2, *packs],
                               default=paths.ANTELOPEV2,
                               tooltip="Folder under models/insightface/models/ holding the .onnx files flat: "
                                       f"antelopev2 from {paths.MODEL_FILES[paths.INSIGHTFACE].source}."),
                io.Combo.Input("provider", options=list(PROVIDER_CHOICES), default="auto",
                               tooltip="onnxruntime device: auto = the CPU (these models run once per reference "
                                       "image, and a GPU provider holds VRAM that ComfyUI can neither see nor free). "
                                       "CUDA / ROCM: on the GPU, with an arena that grows only as needed."),
            ],
            outputs=[FaceAnalysis.Output(display_name="FACE_ANALYSIS")],
        )

    @classmethod
    def execute(cls, model_pack, provider) -> io.NodeOutput:
        folder = paths.insightface_pack_dirs().get(model_pack)
        try:
            if folder is None:
                raise encoders.ModelFilesError(f"insightface pack {model_pack!r} is in none of "
                                               f"{[os.path.dirname(f) for f in paths.folders(paths.INSIGHTFACE)]}")
            return io.NodeOutput(encoders.load_face_analyzer(folder, providers=onnx_providers(provider)))
        except encoders.ModelFilesError as e:
            raise paths.missing(paths.INSIGHTFACE, str(e)) from e


class FacexlibLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PuLIDFluxID_FacexlibLoader", display_name="PuLID-Flux Load facexlib", category=CATEGORY_LOADERS,
            description="facexlib face alignment (RetinaFace) and parsing (BiSeNet) from models/facexlib/ "
                        "(detection_Resnet50_Final.pth, parsing_bisenet.pth); they run on the CPU.",
            inputs=[io.Boolean.Input("load_detector", default=True,
                                     tooltip="Load the RetinaFace detector (the official alignment source). Off: "
                                             "only BiSeNet is needed, and 'Encode' must align on insightface's "
                                             "landmarks.")],
            outputs=[Facexlib.Output(display_name="FACEXLIB")],
        )

    @classmethod
    def execute(cls, load_detector) -> io.NodeOutput:
        errors = []
        for folder in paths.folders(paths.FACEXLIB):
            try:
                # On the offload device (CPU): they run once per reference image, and kept on the GPU while the
                # node output is cached they would hold VRAM for nothing.
                return io.NodeOutput(encoders.load_face_aligner(folder, device=mm.unet_offload_device(),
                                                                need_detector=load_detector))
            except encoders.ModelFilesError as e:
                errors.append(str(e))
        raise paths.missing(paths.FACEXLIB, " | ".join(errors))
