"""The pack's model files, one table (STUB in the `guide` branch: the `models` branch owns this module and
brings the sizes, checksums and the installer; only the fields the workflow generator reads are filled here)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelFile:
    name: str
    group: str  # 'pulid' / 'eva_clip' / 'insightface' / 'facexlib'
    url: str
    size: int | None
    sha256: str | None  # None: unpinned
    licence: str
    source: str  # the page to cite
    directory: str  # folder under models/
    non_commercial: bool = False


_HF, _GH = "https://huggingface.co", "https://github.com/xinntao/facexlib/releases/download"
FILES: tuple[ModelFile, ...] = (
    ModelFile("pulid_flux_v0.9.1.safetensors", "pulid", f"{_HF}/guozinan/PuLID/resolve/main/pulid_flux_v0.9.1.safetensors",
              None, None, "Apache-2.0", f"{_HF}/guozinan/PuLID", "pulid"),
    ModelFile("EVA02_CLIP_L_336_psz14_s6B.pt", "eva_clip",
              f"{_HF}/QuanSun/EVA-CLIP/resolve/main/EVA02_CLIP_L_336_psz14_s6B.pt", None, None, "MIT",
              f"{_HF}/QuanSun/EVA-CLIP", "clip_vision"),
    *(ModelFile(n, "insightface", f"{_HF}/DIAMONIK7777/antelopev2/resolve/main/{n}", None, None,
                "insightface model zoo: non-commercial research only", f"{_HF}/DIAMONIK7777/antelopev2",
                "insightface/models/antelopev2", non_commercial=True)
      for n in ("scrfd_10g_bnkps.onnx", "glintr100.onnx")),
    ModelFile("parsing_bisenet.pth", "facexlib", f"{_GH}/v0.2.0/parsing_bisenet.pth", None, None, "MIT",
              "https://github.com/xinntao/facexlib/releases", "facexlib"),
    ModelFile("detection_Resnet50_Final.pth", "facexlib", f"{_GH}/v0.1.0/detection_Resnet50_Final.pth", None, None,
              "MIT", "https://github.com/xinntao/facexlib/releases", "facexlib"),
)
