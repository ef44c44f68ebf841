"""Model folders and files of the pack: one table, the folders registered once through ``folder_paths``
(the only import-time side effect), and the "missing file" errors that read the table.

An ``extra_model_paths.yaml`` is applied before custom nodes are imported; when it names one of our keys,
ComfyUI has already created that key with an EMPTY extension set (every file matches). So ``register``
keeps every path already there, adds the default ``models/<key>`` after them, and resets the extensions.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import folder_paths

from . import model_files
from .model_files import EVA_CLIP, FACEXLIB, INSIGHTFACE, PULID

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelFiles:
    files: tuple[str, ...]  # the files the pack reads (the first one is the default choice)
    folders: tuple[str, ...]  # folder_paths keys searched, in order
    subfolder: str  # below each folder
    source: str
    licence: str


ANTELOPEV2 = "antelopev2"
_FOLDERS = {PULID: (PULID,), EVA_CLIP: ("clip_vision", "text_encoders"), INSIGHTFACE: (INSIGHTFACE,),
            FACEXLIB: (FACEXLIB,)}


def _entry(key: str) -> ModelFiles:
    files = model_files.group(key)
    sub = files[0].directory.partition("/")[2]  # insightface/models/antelopev2 -> models/antelopev2
    return ModelFiles(tuple(f.name for f in files), _FOLDERS[key], sub, files[0].source, files[0].licence)


MODEL_FILES = {key: _entry(key) for key in model_files.GROUPS}
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
    """Which files, the folder they go in, and the one command that fetches them there."""
    e, folder = MODEL_FILES[key], folders(key)[0]
    return (f"put {' and '.join(e.files)} ({e.source}, licence: {e.licence}) into {folder}; the command that "
            f"fetches and checks them: {model_files.fetch_command(key, folder)}")


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


def _onnx_names(folder: str) -> set[str]:
    return {n for n in os.listdir(folder) if n.endswith(".onnx")} if os.path.isdir(folder) else set()


def insightface_pack_dirs() -> dict[str, str]:
    """{pack name: folder} for every ``<insightface path>/models/<pack>/`` holding .onnx files (first wins).

    Forgiving: ``<pack>/<pack>/`` (a zip extracted one level too deep) is used for ``<pack>``, and
    antelopev2's two files lying directly in ``<insightface path>/models/`` or ``<insightface path>/``
    are used as ``antelopev2``; each such place is logged once.
    """
    found: dict[str, str] = {}
    wanted = set(MODEL_FILES[INSIGHTFACE].files)
    for root in folder_paths.get_folder_paths(INSIGHTFACE):
        packs = os.path.join(root, "models")  # insightface's FaceAnalysis(root=R) reads R/models/<pack>/
        for name in sorted(os.listdir(packs)) if os.path.isdir(packs) else []:
            d = os.path.join(packs, name)
            if name in found or not os.path.isdir(d):
                continue
            if _onnx_names(d):
                found[name] = d
            elif _onnx_names(os.path.join(d, name)):
                found[name] = _noted(os.path.join(d, name), f"nested folder (expected the files in {d})")
        for loose in (packs, root):
            if ANTELOPEV2 not in found and wanted <= _onnx_names(loose):
                found[ANTELOPEV2] = _noted(loose, f"files not in {os.path.join(packs, ANTELOPEV2)}")
    return found


_noted_dirs: set[str] = set()


def _noted(folder: str, why: str) -> str:
    if folder not in _noted_dirs:
        _noted_dirs.add(folder)
        log.info("PuLID-Flux: using the insightface models found in %s (%s)", folder, why)
    return folder


def id_dirs() -> list[tuple[str, str]]:
    """[(annotation, folder)] searched by Load ID: output/pulid_ids then input/pulid_ids."""
    return [("output", os.path.join(folder_paths.get_output_directory(), ID_SUBFOLDER)),
            ("input", os.path.join(folder_paths.get_input_directory(), ID_SUBFOLDER))]
