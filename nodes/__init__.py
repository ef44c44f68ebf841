"""ComfyUI glue (V3 schema): the node classes and the extension ComfyUI loads through ``comfy_entrypoint``."""

from __future__ import annotations

import logging
import os
import shutil

import folder_paths
from comfy_api.latest import ComfyExtension, io

from . import paths
from .apply import Apply
from .encode import EncodeIdentity
from .id_io import LoadID, SaveID
from .loaders import EvaClipLoader, FaceAnalysisLoader, FacexlibLoader, ModelLoader
from .sheet import LikenessSheet
from .similarity import FaceSimilarity

log = logging.getLogger(__name__)
NODES: list[type[io.ComfyNode]] = [ModelLoader, EvaClipLoader, FaceAnalysisLoader, FacexlibLoader, EncodeIdentity,
                                   Apply, SaveID, LoadID, FaceSimilarity, LikenessSheet]

paths.register()
# The shipped workflows' LoadImage names this public-domain photo (NASA, via scikit-image), so their first Run
# works; it is copied into input/ once, never over a file of that name.
EXAMPLE_FACE = "pulid_flux_example_face.jpg"


def place_example_face() -> None:
    src = os.path.join(os.path.dirname(os.path.dirname(__file__)), "workflows", EXAMPLE_FACE)
    dst = os.path.join(folder_paths.get_input_directory(), EXAMPLE_FACE)
    if os.path.isfile(src) and not os.path.exists(dst):
        try:
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copyfile(src, dst)
            log.info("PuLID-Flux: example face for the workflows copied to %s", dst)
        except OSError as e:  # a read-only input folder: the workflows then ask for a photo
            log.warning("PuLID-Flux: could not copy the example face to %s: %s", dst, e)


class PulidFluxIDExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> PulidFluxIDExtension:
    place_example_face()
    return PulidFluxIDExtension()
