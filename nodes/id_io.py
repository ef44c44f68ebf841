"""Save / Load a PuLID-Flux ID (.safetensors), so an identity is encoded once and reused without any
face model: Save writes ``output/pulid_ids/<prefix>_NNNNN.safetensors``; Load lists ``output/pulid_ids``
and ``input/pulid_ids``."""

from __future__ import annotations

import logging
import ntpath
import os
import posixpath

import folder_paths
from comfy_api.latest import io, ui

from ..pulid.embedding import IDEmbedding
from . import paths
from .types import CATEGORY_IDENTITY, Identity

log = logging.getLogger(__name__)
ID_EXTENSION = ".safetensors"


def saved_ids() -> list[str]:
    """Names as Load ID lists them: 'pulid_ids/<file> [output]' (resolved by folder_paths' annotations)."""
    names = []
    for annotation, folder in paths.id_dirs():
        for dirpath, _dirs, files in sorted(os.walk(folder)):
            rel = os.path.relpath(dirpath, folder).replace(os.sep, "/")
            sub = paths.ID_SUBFOLDER if rel == "." else f"{paths.ID_SUBFOLDER}/{rel}"
            names += [f"{sub}/{f} [{annotation}]" for f in sorted(files) if f.endswith(ID_EXTENSION)]
    return names


def check_prefix(prefix: str) -> str:
    """A relative name inside output/pulid_ids/ ('alice', 'people/alice'); never empty, absolute or '..'-escaping."""
    name = prefix.strip() if isinstance(prefix, str) else ""
    norm = posixpath.normpath(name.replace("\\", "/")) if name else ""  # "/" and "\\" both separate folders
    if not name or norm in (".", "..") or norm.startswith(("../", "/")) or ntpath.splitdrive(name)[0]:
        raise ValueError(f"filename_prefix {prefix!r} must be a relative file name inside output/{paths.ID_SUBFOLDER}/, "
                         f"e.g. 'alice' or 'people/alice'")
    return name


class SaveID(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PuLIDFluxID_SaveID",
            display_name="PuLID-Flux Save ID",
            category=CATEGORY_IDENTITY,
            description="Writes the ID tokens (and the uncond ID) to output/pulid_ids/ as .safetensors.",
            inputs=[
                Identity.Input("identity", tooltip="The identity to save."),
                io.String.Input("filename_prefix", default="identity",
                                tooltip="File name prefix; a counter is appended (identity_00001_.safetensors)."),
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
        rel = os.path.join(subfolder, file) if subfolder else file
        log.info("PuLID-Flux: saved ID %s", os.path.join(folder, file))
        name = f"{paths.ID_SUBFOLDER}/{rel} [output]"
        # the name also goes to the UI: shown on the node and in the queue's output of this prompt
        return io.NodeOutput(name, ui=ui.PreviewText(name))


class LoadID(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PuLIDFluxID_LoadID",
            display_name="PuLID-Flux Load ID",
            category=CATEGORY_IDENTITY,
            description="Reads an ID saved by 'PuLID-Flux Save ID' (output/pulid_ids/ or input/pulid_ids/); "
                        "no face model is needed.",
            inputs=[io.Combo.Input("id_name", options=saved_ids(),
                                   tooltip="A saved identity from output/pulid_ids/ or input/pulid_ids/.")],
            outputs=[Identity.Output(display_name="ID")],
        )

    @classmethod
    def fingerprint_inputs(cls, id_name):
        path = folder_paths.get_annotated_filepath(id_name)
        return os.path.getmtime(path) if os.path.isfile(path) else id_name

    @classmethod
    def execute(cls, id_name) -> io.NodeOutput:
        path = folder_paths.get_annotated_filepath(id_name)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"saved ID {id_name!r} not found at {path!r}; save one with 'PuLID-Flux Save ID'")
        return io.NodeOutput(IDEmbedding.load(path))
