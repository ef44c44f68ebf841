"""Install the pack's requirements without breaking a GPU onnxruntime (ComfyUI-Manager runs this file).

insightface 2.x depends on the CPU `onnxruntime`. Both `onnxruntime` and `onnxruntime-gpu` write the
same `onnxruntime/` package, so installing insightface into a venv that had `onnxruntime-gpu`
silently replaces the GPU build, while `pip list` still shows both (docs: deps.md §0, §2).
This script installs requirements.txt and then, if a GPU build was (or is) there, restores it with
the CUDA major that matches torch: onnxruntime-gpu <= 1.26 links CUDA 12, >= 1.27 links CUDA 13.

Run it with ComfyUI's own Python:  python install.py   (PULID_ONNXRUNTIME=gpu|cpu|auto, default auto:
keep whatever runtime kind was installed; gpu = switch to onnxruntime-gpu for torch's CUDA).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

log = logging.getLogger("PuLID-Flux install")

HERE = Path(__file__).resolve().parent
CPU, GPU = "onnxruntime", "onnxruntime-gpu"
# onnxruntime-gpu on PyPI: <= 1.26.x links libcudart.so.12, >= 1.27.0 links libcudart.so.13 (deps.md §0.4).
GPU_SPEC_BY_CUDA_MAJOR = {12: "onnxruntime-gpu>=1.23,<1.27", 13: "onnxruntime-gpu>=1.27"}


@dataclass(frozen=True)
class Step:
    pip_args: tuple[str, ...]  # arguments after `python -m pip`
    why: str


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _torch_cuda() -> tuple[str | None, bool]:
    try:
        import torch
    except ImportError:
        return None, False
    return torch.version.cuda, bool(torch.cuda.is_available())


def plan(cpu: str | None, gpu: str | None, torch_cuda: str | None, mode: str = "auto") -> tuple[list[Step], list[str]]:
    """What to do after requirements.txt is installed. Pure: returns (pip steps, warnings).

    cpu/gpu: installed versions of onnxruntime / onnxruntime-gpu (None if absent).
    torch_cuda: torch.version.cuda ("12.8", "13.0", or None for CPU/ROCm/MPS builds).
    mode: "auto" keeps a GPU build if one was installed, "gpu" installs one, "cpu" keeps the CPU build.
    """
    if mode not in ("auto", "gpu", "cpu"):
        raise ValueError(f"PULID_ONNXRUNTIME={mode!r}: use auto, gpu or cpu")
    warnings: list[str] = []
    want_gpu = mode == "gpu" or (mode == "auto" and gpu is not None)
    if not want_gpu:
        if gpu is not None and cpu is not None:
            warnings.append(f"both {CPU} {cpu} and {GPU} {gpu} are installed; the CPU build is the one in use")
        return [], warnings
    major = int(torch_cuda.split(".")[0]) if torch_cuda else None
    spec = GPU_SPEC_BY_CUDA_MAJOR.get(major)
    if spec is None:
        warnings.append(
            f"torch reports CUDA {torch_cuda!r}: no onnxruntime-gpu build is known to match it, so the face "
            f"models keep the runtime that is installed ({GPU if gpu else CPU}); they also run on the CPU"
        )
        return [], warnings
    steps = []
    gpu_major_ok = gpu is not None and _gpu_cuda_major(gpu) == major
    if cpu is not None:
        # The CPU build overwrote (or will shadow) the GPU files: remove it, then rewrite the GPU build.
        steps.append(Step(("uninstall", "-y", CPU), f"{CPU} {cpu} replaces the GPU build's files"))
    if cpu is not None or not gpu_major_ok:
        steps.append(Step(("install", "--force-reinstall", "--no-deps", spec if not gpu_major_ok else f"{GPU}=={gpu}"),
                          f"{GPU} for torch's CUDA {major}"))
    return steps, warnings


def _gpu_cuda_major(version: str) -> int:
    major, minor = (int(x) for x in version.split(".")[:2])
    return 13 if (major, minor) >= (1, 27) else 12


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="[PuLID-Flux] %(message)s")
    pip = [sys.executable, "-m", "pip"]
    subprocess.run(pip + ["install", "-r", str(HERE / "requirements.txt")], check=True)
    cuda, available = _torch_cuda()
    steps, warnings = plan(_installed(CPU), _installed(GPU), cuda, os.environ.get("PULID_ONNXRUNTIME", "auto"))
    for w in warnings:
        log.warning(w)
    for step in steps:
        log.info("%s: pip %s", step.why, " ".join(step.pip_args))
        subprocess.run(pip + list(step.pip_args), check=True)
    if available and _installed(GPU) is None:
        log.info("insightface runs on the CPU (fine: once per reference image). For the GPU: "
                 "PULID_ONNXRUNTIME=gpu python install.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
