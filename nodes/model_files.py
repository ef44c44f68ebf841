"""The pack's model files: the one table read by the loaders' "missing file" errors (nodes/paths.py),
``install.py --models``, the README test and the workflows' ``properties.models``.

Plain Python without comfy / folder_paths: install.py loads this file by path, without ComfyUI.
``sha256=None`` means "unpinned": checked by size only, its hash recorded on first download.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelFile:
    name: str
    group: str  # nodes/paths.py MODEL_FILES key: pulid, eva_clip, insightface, facexlib
    url: str  # direct file URL (an ungated one where it exists)
    size: int | None  # bytes
    sha256: str | None  # None = unpinned
    licence: str
    source: str  # the page to cite
    directory: str  # folder under ComfyUI's models/ (the frontend's properties.models "directory")
    non_commercial: bool = False


PULID, EVA_CLIP, INSIGHTFACE, FACEXLIB = "pulid", "eva_clip", "insightface", "facexlib"
GROUPS = (PULID, EVA_CLIP, INSIGHTFACE, FACEXLIB)
_HF = "https://huggingface.co"
_FACEXLIB = "https://github.com/xinntao/facexlib/releases/download"
INSIGHTFACE_LICENCE = ("insightface model zoo: non-commercial research use only "
                       "(https://github.com/deepinsight/insightface#license)")
ACCEPT_FLAG = "--accept-insightface-licence"

# Where each pin comes from (public sources; each size + sha256 agrees across them):
# - pulid_flux_v0.9.1 and EVA02-CLIP-L-336: the pulid-flux manifest of github.com/utensils/mold
#   (crates/mold-core/src/manifest.rs, sizes asserted in its tests), the same sha256s in several PuLID
#   research repos' checkpoint notes; the PuLID size also in SimpleSDXL's model-size lists.
# - antelopev2 scrfd_10g_bnkps / glintr100: sha256 of the files of insightface's own v0.7 antelopev2.zip as
#   published by several independent projects' manifests (scrfd_10g_bnkps is byte-identical to buffalo_l's
#   det_10g.onnx, 16,923,827 B); mold asserts the same names from DIAMONIK7777/antelopev2.
# - facexlib detection_Resnet50_Final (v0.1.0) and parsing_bisenet (v0.2.0, the URL facexlib's own
#   init_parsing_model uses): sha256 in many projects' download manifests; detection_Resnet50_Final also in
#   github.com/clibdev/Pytorch_Retinaface's README (the same RetinaFace-R50 weights).
FILES: tuple[ModelFile, ...] = (
    ModelFile("pulid_flux_v0.9.1.safetensors", PULID, f"{_HF}/guozinan/PuLID/resolve/main/pulid_flux_v0.9.1.safetensors",
              1142099520, "92c41c3af322b02e58e1b32842e4601e08c8f16ec1fe80089dbe957df510f51d", "Apache-2.0",
              f"{_HF}/guozinan/PuLID", "pulid"),
    ModelFile("EVA02_CLIP_L_336_psz14_s6B.pt", EVA_CLIP,
              f"{_HF}/QuanSun/EVA-CLIP/resolve/main/EVA02_CLIP_L_336_psz14_s6B.pt",
              856461210, "84c3a17a228c567a155259b2245b0b59072bf7da510260a0a02ec54de6d50b05", "MIT",
              f"{_HF}/QuanSun/EVA-CLIP", "clip_vision"),
    ModelFile("scrfd_10g_bnkps.onnx", INSIGHTFACE, f"{_HF}/DIAMONIK7777/antelopev2/resolve/main/scrfd_10g_bnkps.onnx",
              16923827, "5838f7fe053675b1c7a08b633df49e7af5495cee0493c7dcf6697200b85b5b91", INSIGHTFACE_LICENCE,
              f"{_HF}/DIAMONIK7777/antelopev2", "insightface/models/antelopev2", non_commercial=True),
    ModelFile("glintr100.onnx", INSIGHTFACE, f"{_HF}/DIAMONIK7777/antelopev2/resolve/main/glintr100.onnx",
              260665334, "4ab1d6435d639628a6f3e5008dd4f929edf4c4124b1a7169e1048f9fef534cdf", INSIGHTFACE_LICENCE,
              f"{_HF}/DIAMONIK7777/antelopev2", "insightface/models/antelopev2", non_commercial=True),
    ModelFile("parsing_bisenet.pth", FACEXLIB, f"{_FACEXLIB}/v0.2.0/parsing_bisenet.pth",
              53289463, "468e13ca13a9b43cc0881a9f99083a430e9c0a38abd935431d1c28ee94b26567", "MIT (facexlib)",
              "https://github.com/xinntao/facexlib/releases/tag/v0.2.0", "facexlib"),
    ModelFile("detection_Resnet50_Final.pth", FACEXLIB, f"{_FACEXLIB}/v0.1.0/detection_Resnet50_Final.pth",
              109497761, "6d1de9c2944f2ccddca5f5e010ea5ae64a39845a86311af6fdf30841b0a5a16d", "MIT (facexlib)",
              "https://github.com/xinntao/facexlib/releases/tag/v0.1.0", "facexlib"),
)
INSTALL_SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "install.py")


def group(name: str) -> tuple[ModelFile, ...]:
    return tuple(f for f in FILES if f.group == name)


def fetch_command(group_name: str | None = None, folder: str | None = None) -> str:
    """The exact command line (this Python) that fetches every file, or one group's files into ``folder``."""
    args = [sys.executable, INSTALL_SCRIPT, "--models"]
    if group_name:
        args += ["--only", group_name] + (["--folder", folder] if folder else [])
    if any(f.non_commercial for f in (group(group_name) if group_name else FILES)):
        args.append(ACCEPT_FLAG)
    return subprocess.list2cmdline(args) if os.name == "nt" else shlex.join(args)
