"""Model folders and files of the pack: one table, the folders registered once through ``folder_paths``
(the only import-time side effect), and the "missing file" errors that read the table.

An ``extra_model_paths.yaml`` is applied before custom nodes are imported; when it names one of our keys,
ComfyUI has already created that key with an EMPTY extension set (every file matches). So ``register``
keeps every path already there, adds the default ``models/<key>`` after them, and resets the extensions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import folder_paths


@dataclass(frozen=True)
class ModelFiles:
    files: tuple[str, ...]  # the files the pack reads (the first one is the default choice)
    folders: tuple[str, ...]  # folder_paths keys searched, in order
    subfolder: str  # below each folder
    source: str
    licence: str


PULID, EVA_CLIP, INSIGHTFACE, FACEXLIB = "pulid", "eva_clip", "insightface", "facexlib"
ANTELOPEV2 = "antelopev2"
MODEL_FILES = {
    PULID: ModelFiles(("pulid_flux_v0.9.1.safetensors",), (PULID,), "", "https://huggingface.co/guozinan/PuLID",
                      "Apache-2.0"),
    EVA_CLIP: ModelFiles(("EVA02_CLIP_L_336_psz14_s6B.pt",), ("clip_vision", "text_encoders"), "",
                         "https://huggingface.co/QuanSun/EVA-CLIP", "MIT"),
    INSIGHTFACE: ModelFiles(("scrfd_10g_bnkps.onnx", "glintr100.onnx"), (INSIGHTFACE,), f"models/{ANTELOPEV2}",
                            "https://huggingface.co/DIAMONIK7777/antelopev2",
                            "insightface model zoo: non-commercial research only"),
    FACEXLIB: ModelFiles(("parsing_bisenet.pth", "detection_Resnet50_Final.pth"), (FACEXLIB,), "",
                         "https://github.com/xinntao/facexlib/releases", "MIT"),
}
_EXTENSIONS = {PULID: set(folder_paths.supported_pt_extensions), INSIGHTFACE: {".onnx"}, FACEXLIB: {".pth"}}
ID_SUBFOLDER = "pulid_ids"  # saved identities: output/pulid_ids/*.safetensors (also read from input/)


def register() -> None:
    for key, exts in _EXTENSIONS.items():
        default = os.path.join(folder_paths.models_dir, key)
        paths = list(folder_paths.folder_names_and_paths.get(key, ([], set()))[0])
        if default not in paths:
            paths.append(default)
        folder_paths.folder_names_and_paths[key] = (paths, set(exts))


def folders(key: str) -> list[str]:
    """Every folder searched for the files of MODEL_FILES[key]."""
    entry = MODEL_FILES[key]
    return [os.path.join(p, entry.subfolder) if entry.subfolder else p
            for k in entry.folders for p in folder_paths.get_folder_paths(k)]


def where_to_get(key: str) -> str:
    e = MODEL_FILES[key]
    return f"put {' and '.join(e.files)} ({e.source}, licence: {e.licence}) into {folders(key)[0]}"


def missing(key: str, what: str) -> FileNotFoundError:
    return FileNotFoundError(f"PuLID-Flux: {what}; {where_to_get(key)}")


def file_names(key: str) -> list[str]:
    """Files of a key's folders for a loader's list; the default name when there are none."""
    names: list[str] = []
    for k in MODEL_FILES[key].folders:
        names += [n for n in folder_paths.get_filename_list(k) if n not in names]
    return names or [MODEL_FILES[key].files[0]]


def find_file(key: str, name: str) -> str:
    for k in MODEL_FILES[key].folders:
        path = folder_paths.get_full_path(k, name)
        if path:
            return path
    raise missing(key, f"{name!r} is in none of {folders(key)}")


def insightface_pack_dirs() -> dict[str, str]:
    """{pack name: folder} for every ``<insightface path>/models/<pack>/`` holding .onnx files (first wins)."""
    found: dict[str, str] = {}
    for root in folder_paths.get_folder_paths(INSIGHTFACE):
        packs = os.path.join(root, "models")  # insightface's FaceAnalysis(root=R) reads R/models/<pack>/
        for name in sorted(os.listdir(packs)) if os.path.isdir(packs) else []:
            d = os.path.join(packs, name)
            if name not in found and os.path.isdir(d) and any(f.endswith(".onnx") for f in os.listdir(d)):
                found[name] = d
    return found


def id_dirs() -> list[tuple[str, str]]:
    """[(annotation, folder)] searched by Load ID: output/pulid_ids then input/pulid_ids."""
    return [("output", os.path.join(folder_paths.get_output_directory(), ID_SUBFOLDER)),
            ("input", os.path.join(folder_paths.get_input_directory(), ID_SUBFOLDER))]
