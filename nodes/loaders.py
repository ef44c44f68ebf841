"""Loader nodes: PuLID-Flux model, EVA-CLIP tower, insightface antelopev2, facexlib.

Torch weights are wrapped in a ``ModelPatcher`` so ComfyUI's memory manager loads and offloads them;
nothing is ever downloaded: a missing file raises an error naming the folder, the file and its source.
"""

from __future__ import annotations

import logging

import comfy.model_management as mm
import comfy.model_patcher
import comfy.ops
import folder_paths
import torch
from comfy_api.latest import io

from .. import encoders
from ..pulid.checkpoint import load_pulid_file
from . import paths
from .types import CATEGORY_LOADERS, EvaClip, FaceAnalysis, Facexlib, PulidModel

log = logging.getLogger("PuLID-Flux")

PROVIDERS = ["auto", "CPU", "CUDA", "ROCM", "CoreML"]  # onnxruntime execution providers offered for insightface
DEFAULT_PULID = "pulid_flux_v0.9.1.safetensors"
DEFAULT_EVA = "EVA02_CLIP_L_336_psz14_s6B.pt"


def weights_dtype(device: torch.device) -> torch.dtype:
    """bf16 where the device supports it (the official dtype), else fp32 (e.g. on the CPU)."""
    return mm.unet_dtype(device, supported_dtypes=[torch.bfloat16, torch.float32])


def wrap(module: torch.nn.Module) -> comfy.model_patcher.ModelPatcher:
    return comfy.model_patcher.ModelPatcher(module, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


class TowerHolder(torch.nn.Module):
    """Gives the EVA tower to a ModelPatcher: the patcher assigns ``model.device`` on load/offload, which
    the tower exposes as a read-only property (its device follows its weights)."""

    def __init__(self, tower: torch.nn.Module):
        super().__init__()
        self.tower = tower


def _with_default(names: list[str], default: str) -> list[str]:
    return names or [default]


class PulidFluxModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PuLIDFluxID_ModelLoader",
            display_name="Load PuLID-Flux Model",
            category=CATEGORY_LOADERS,
            description="Loads the PuLID-Flux weights (ID encoder + Flux cross-attentions) from models/pulid/.",
            inputs=[io.Combo.Input("pulid_file", options=_with_default(folder_paths.get_filename_list(paths.PULID),
                                                                       DEFAULT_PULID),
                                   tooltip=f"File in models/pulid/: {paths.SOURCES[paths.PULID]}.")],
            outputs=[PulidModel.Output(display_name="PULID")],
        )

    @classmethod
    def execute(cls, pulid_file) -> io.NodeOutput:
        path = folder_paths.get_full_path(paths.PULID, pulid_file)
        if path is None:
            raise FileNotFoundError(f"PuLID-Flux file {pulid_file!r} is not in {paths.missing_hint([paths.PULID])}; "
                                    f"download {paths.SOURCES[paths.PULID]} into that folder")
        device = mm.get_torch_device()
        model = load_pulid_file(path, dtype=weights_dtype(device), device=mm.unet_offload_device(),
                                operations=comfy.ops.manual_cast)
        log.info("PuLID-Flux: loaded %s (%d cross-attentions, id_dim %d)", pulid_file, model.num_ca, model.id_dim)
        return io.NodeOutput(wrap(model))


class EvaClipLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PuLIDFluxID_EvaClipLoader",
            display_name="Load EVA-CLIP (PuLID-Flux)",
            category=CATEGORY_LOADERS,
            description="Loads the EVA02-CLIP-L-336 vision tower (official .pt or open_clip safetensors) from "
                        "models/clip/ or models/clip_vision/; the text tower is dropped.",
            inputs=[io.Combo.Input("eva_file", options=_with_default(paths.eva_clip_files(), DEFAULT_EVA),
                                   default=DEFAULT_EVA,
                                   tooltip=f"File in models/clip/ or models/clip_vision/: {paths.SOURCES['eva_clip']}.")],
            outputs=[EvaClip.Output(display_name="EVA_CLIP")],
        )

    @classmethod
    def execute(cls, eva_file) -> io.NodeOutput:
        path = paths.eva_clip_path(eva_file)
        tower = encoders.load_eva_clip(path, device=mm.unet_offload_device(), dtype=weights_dtype(mm.get_torch_device()))
        return io.NodeOutput(wrap(TowerHolder(tower)))


def _providers(choice: str) -> list[str] | None:
    if choice == "auto":
        return None  # encoders pick CUDA when onnxruntime offers it, else the CPU
    return [f"{choice}ExecutionProvider"] + ([] if choice == "CPU" else ["CPUExecutionProvider"])


class FaceAnalysisLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        packs = list(paths.insightface_pack_dirs())
        return io.Schema(
            node_id="PuLIDFluxID_FaceAnalysisLoader",
            display_name="Load InsightFace (PuLID-Flux)",
            category=CATEGORY_LOADERS,
            description="insightface antelopev2 (face detection + ArcFace) from models/insightface/models/antelopev2/.",
            inputs=[
                io.Combo.Input("model_pack", options=packs if paths.ANTELOPEV2 in packs else [paths.ANTELOPEV2, *packs],
                               default=paths.ANTELOPEV2,
                               tooltip="Folder under models/insightface/models/ holding the .onnx files flat: "
                                       f"{paths.SOURCES[paths.INSIGHTFACE]}."),
                io.Combo.Input("provider", options=PROVIDERS, default="auto",
                               tooltip="onnxruntime device: auto = CUDA when onnxruntime-gpu offers it, else CPU. "
                                       "It runs once per reference image, so the CPU is fine."),
            ],
            outputs=[FaceAnalysis.Output(display_name="FACE_ANALYSIS")],
        )

    @classmethod
    def execute(cls, model_pack, provider) -> io.NodeOutput:
        folder = paths.insightface_pack_dirs().get(model_pack)
        if folder is None:
            roots = [f"{r}/{paths.INSIGHTFACE_PACKS_SUBDIR}/{model_pack}" for r in paths.folders(paths.INSIGHTFACE)]
            raise FileNotFoundError(
                f"insightface pack {model_pack!r} not found: create {roots[0]!r} (or any of {roots[1:]}) and put "
                f"{paths.SOURCES[paths.INSIGHTFACE]} directly in it")
        return io.NodeOutput(encoders.load_face_analyzer(folder, providers=_providers(provider)))


class FacexlibLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PuLIDFluxID_FacexlibLoader",
            display_name="Load facexlib (PuLID-Flux)",
            category=CATEGORY_LOADERS,
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
                # Offload device (CPU): they run once per reference image, and kept on the GPU while the
                # node output is cached they would hold VRAM for nothing (ToTheBeginning/PuLID#16).
                return io.NodeOutput(encoders.load_face_aligner(folder, device=mm.unet_offload_device(),
                                                                need_detector=load_detector))
            except encoders.ModelFilesError as e:
                errors.append(str(e))
        raise FileNotFoundError(f"no usable facexlib folder; put the files in models/facexlib/ ({paths.SOURCES[paths.FACEXLIB]}). "
                                + " | ".join(errors))
