"""ComfyUI glue (V3 schema): the node classes and the extension ComfyUI loads through ``comfy_entrypoint``."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from . import paths
from .apply import Apply
from .encode import EncodeIdentity
from .id_io import LoadID, SaveID
from .loaders import EvaClipLoader, FaceAnalysisLoader, FacexlibLoader, ModelLoader
from .sheet import LikenessSheet
from .similarity import FaceSimilarity

NODES: list[type[io.ComfyNode]] = [ModelLoader, EvaClipLoader, FaceAnalysisLoader, FacexlibLoader, EncodeIdentity,
                                   Apply, SaveID, LoadID, FaceSimilarity, LikenessSheet]

paths.register()


class PulidFluxIDExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> PulidFluxIDExtension:
    return PulidFluxIDExtension()
