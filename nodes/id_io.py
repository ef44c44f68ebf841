"""Save / Load a PuLID-Flux ID, so an identity is encoded once and reused without any face model.

Save writes ``output/pulid_ids/<prefix>_NNNNN_.safetensors`` and its ID card ``<prefix>_NNNNN_.png`` (the
aligned faces and the name, carrying the same bytes). Load lists the saved files of ``output/pulid_ids`` and
``input/pulid_ids`` and the images of ``input/`` (cards, uploaded like any image). Its input is named
``image`` so that engines which copy a workflow's input images to other servers carry the card along.
"""

from __future__ import annotations

import logging
import ntpath
import os
import posixpath

import folder_paths
from comfy_api.latest import io

from ..pulid.embedding import IDEmbedding
from . import paths
from .types import CATEGORY_IDENTITY, Identity

log = logging.getLogger(__name__)
ID_EXTENSION = ".safetensors"
MAX_NAME_BYTES = 200


def saved_ids() -> list[str]:
    """Names as Load ID lists them: 'pulid_ids/<file> [output]' (resolved by folder_paths' annotations)."""
    names = []
    for annotation, folder in paths.id_dirs():
        for dirpath, _dirs, files in sorted(os.walk(folder)):
            rel = os.path.relpath(dirpath, folder).replace(os.sep, "/")
            sub = paths.ID_SUBFOLDER if rel == "." else f"{paths.ID_SUBFOLDER}/{rel}"
            names += [f"{sub}/{f} [{annotation}]" for f in sorted(files) if f.endswith(ID_EXTENSION)]
    return names


def id_choices() -> list[str]:
    """Load ID's options: the saved IDs, then the images in input/ (ID cards among them)."""
    folder = folder_paths.get_input_directory()
    files = sorted(f for f in os.listdir(folder) if os.path.isfile(os.path.join(folder, f))) if os.path.isdir(
        folder) else []
    return saved_ids() + folder_paths.filter_files_content_types(files, ["image"])


def check_prefix(prefix: str) -> str:
    """A relative name inside output/pulid_ids/ ('alice', 'people/alice'); never empty, absolute or '..'-escaping,
    and no folder or file name longer than file systems allow (255 bytes, less the counter Save adds)."""
    name = prefix.strip() if isinstance(prefix, str) else ""
    norm = posixpath.normpath(name.replace("\\", "/")) if name else ""  # "/" and "\\" both separate folders
    if not name or norm in (".", "..") or norm.startswith(("../", "/")) or ntpath.splitdrive(name)[0]:
        raise ValueError(f"filename_prefix {prefix!r} must be a relative file name inside output/{paths.ID_SUBFOLDER}/, "
                         f"e.g. 'alice' or 'people/alice'")
    longest = max(len(part.encode()) for part in norm.split("/"))
    if longest > MAX_NAME_BYTES:
        raise ValueError(f"filename_prefix {name[:40]!r}... has a name of {longest} bytes; file systems allow 255 "
                         f"and Save ID adds a counter: keep each folder or file name under {MAX_NAME_BYTES}")
    return name


class SaveID(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PuLIDFluxID_SaveID",
            display_name="PuLID-Flux Save ID",
            category=CATEGORY_IDENTITY,
            description="Writes the identity to output/pulid_ids/ as .safetensors, and its ID card (a PNG of the "
                        "aligned faces and the name that carries the same identity; Load ID reads it).",
            inputs=[
                Identity.Input("identity", tooltip="The identity to save."),
                io.String.Input("filename_prefix", default="identity",
                                tooltip="File name prefix; a counter is appended (identity_00001_.safetensors, "
                                        "and the card identity_00001_.png)."),
            ],
            outputs=[io.String.Output(display_name="name",
                                      tooltip="The name 'PuLID-Flux Load ID' lists this file under.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, identity, filename_prefix) -> io.NodeOutput:
        root = os.path.join(folder_paths.get_output_directory(), paths.ID_SUBFOLDER)
        folder, base, counter, subfolder, _ = folder_paths.get_save_image_path(check_prefix(filename_prefix), root)
        os.makedirs(folder, exist_ok=True)
        file = f"{base}_{counter:05}_{ID_EXTENSION}"  # trailing "_": how get_save_image_path counts
        identity.save(os.path.join(folder, file))
        card = f"{base}_{counter:05}_.png"
        with open(os.path.join(folder, card), "wb") as f:
            f.write(identity.to_card(os.path.basename(filename_prefix.strip())))
        rel = os.path.join(subfolder, file) if subfolder else file
        log.info("PuLID-Flux: saved ID %s and its card %s", os.path.join(folder, file), card)
        name = f"{paths.ID_SUBFOLDER}/{rel} [output]"
        # the name and the card go to the UI: shown on the node and in the queue's output of this prompt
        shown = {"filename": card, "subfolder": os.path.join(paths.ID_SUBFOLDER, subfolder).rstrip(os.sep),
                 "type": "output"}
        return io.NodeOutput(name, ui={"text": (name,), "images": [shown]})


class LoadID(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PuLIDFluxID_LoadID",
            display_name="PuLID-Flux Load ID",
            category=CATEGORY_IDENTITY,
            description="Reads an ID saved by 'PuLID-Flux Save ID' (output/pulid_ids/ or input/pulid_ids/), or its ID "
                        "card from input/ (drop the card PNG on the node); no face model is needed.",
            inputs=[io.Combo.Input("image", options=id_choices(), display_name="id",
                                   upload=io.UploadType.image, image_folder=io.FolderType.input,
                                   tooltip="A saved identity (.safetensors) or an ID card (.png, upload it here).")],
            outputs=[Identity.Output(display_name="ID")],
        )

    @classmethod
    def fingerprint_inputs(cls, image):
        path = folder_paths.get_annotated_filepath(image)
        return os.path.getmtime(path) if os.path.isfile(path) else image

    @classmethod
    def execute(cls, image) -> io.NodeOutput:
        path = folder_paths.get_annotated_filepath(image)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"saved ID {image!r} not found at {path!r}; save one with 'PuLID-Flux Save ID'")
        if path.endswith(ID_EXTENSION):
            return io.NodeOutput(IDEmbedding.load(path))
        return io.NodeOutput(IDEmbedding.from_card(path))
