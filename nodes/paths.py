"""Model folders of the pack, registered once through ``folder_paths`` (the only import-time side effect).

An ``extra_model_paths.yaml`` is applied before custom nodes are imported, and when it names one of our
keys ``add_model_folder_path`` has already created that key with an EMPTY extension set (every file
matches). So we keep every path already registered, add the default ``models/<key>`` after them, and
reset the extension set (docs/comfyui.md §2).
"""

from __future__ import annotations

import os

import folder_paths

PULID = "pulid"  # models/pulid/pulid_flux_v0.9.1.safetensors
INSIGHTFACE = "insightface"  # models/insightface/models/antelopev2/*.onnx
FACEXLIB = "facexlib"  # models/facexlib/{detection_Resnet50_Final,parsing_bisenet}.pth
EVA_FOLDERS = ("clip_vision", "text_encoders")  # models/clip_vision/ and models/clip/ (= text_encoders)
ID_SUBFOLDER = "pulid_ids"  # saved identities: output/pulid_ids/*.safetensors (also read from input/)

INSIGHTFACE_PACKS_SUBDIR = "models"  # insightface's FaceAnalysis(root=R) reads R/models/<pack>/
ANTELOPEV2 = "antelopev2"

_EXTENSIONS = {
    PULID: set(folder_paths.supported_pt_extensions),
    INSIGHTFACE: {".onnx"},
    FACEXLIB: {".pth"},
}

# Where each model comes from (also the README's model table). Error messages quote these.
SOURCES = {
    PULID: "pulid_flux_v0.9.1.safetensors from https://huggingface.co/guozinan/PuLID (Apache-2.0)",
    "eva_clip": "EVA02_CLIP_L_336_psz14_s6B.pt from https://huggingface.co/QuanSun/EVA-CLIP (MIT)",
    INSIGHTFACE: "the antelopev2 pack (1k3d68.onnx, 2d106det.onnx, genderage.onnx, glintr100.onnx, "
                 "scrfd_10g_bnkps.onnx) from https://huggingface.co/DIAMONIK7777/antelopev2 (insightface model "
                 "zoo, non-commercial research use)",
    FACEXLIB: "detection_Resnet50_Final.pth (v0.1.0) and parsing_bisenet.pth (v0.2.0) from "
              "https://github.com/xinntao/facexlib/releases (MIT)",
}


def register() -> None:
    for key, exts in _EXTENSIONS.items():
        default = os.path.join(folder_paths.models_dir, key)
        paths = list(folder_paths.folder_names_and_paths.get(key, ([], set()))[0])
        if default not in paths:
            paths.append(default)
        folder_paths.folder_names_and_paths[key] = (paths, set(exts))


def folders(key: str) -> list[str]:
    return list(folder_paths.get_folder_paths(key))


def insightface_pack_dirs() -> dict[str, str]:
    """{pack name: folder} for every ``<insightface path>/models/<pack>/`` holding .onnx files (first wins)."""
    found: dict[str, str] = {}
    for root in folders(INSIGHTFACE):
        packs = os.path.join(root, INSIGHTFACE_PACKS_SUBDIR)
        if not os.path.isdir(packs):
            continue
        for name in sorted(os.listdir(packs)):
            d = os.path.join(packs, name)
            if name not in found and os.path.isdir(d) and any(f.endswith(".onnx") for f in os.listdir(d)):
                found[name] = d
    return found


def eva_clip_files() -> list[str]:
    names: list[str] = []
    for key in EVA_FOLDERS:
        names += [n for n in folder_paths.get_filename_list(key) if n not in names]
    return names


def eva_clip_path(name: str) -> str:
    for key in EVA_FOLDERS:
        path = folder_paths.get_full_path(key, name)
        if path:
            return path
    raise FileNotFoundError(
        f"EVA-CLIP file {name!r} is in none of {missing_hint(EVA_FOLDERS)}; put {SOURCES['eva_clip']} there"
    )


def missing_hint(keys) -> str:
    return ", ".join(p for k in keys for p in folders(k))


def id_dirs() -> list[tuple[str, str]]:
    """[(annotation, folder)] searched by Load ID: output/pulid_ids then input/pulid_ids."""
    return [("output", os.path.join(folder_paths.get_output_directory(), ID_SUBFOLDER)),
            ("input", os.path.join(folder_paths.get_input_directory(), ID_SUBFOLDER))]
