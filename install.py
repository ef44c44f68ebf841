"""Check the onnxruntime the face models will use; installs and uninstalls nothing unless asked.

ComfyUI-Manager runs this file after it installs requirements.txt. insightface 2.x depends on the CPU
`onnxruntime`; `onnxruntime` and `onnxruntime-gpu` write the same `onnxruntime/` package, so installing
insightface next to `onnxruntime-gpu` silently replaces the GPU build while `pip list` still shows both.
Also, onnxruntime-gpu <= 1.26 links CUDA 12 and >= 1.27 links CUDA 13: a build for the other CUDA major
than torch's cannot load its CUDA provider.

    python install.py                        report only: logs the exact pip commands that would fix it
    python install.py --repair-onnxruntime   run those pip commands (the only mode that changes packages)
    python install.py --repair-onnxruntime --gpu   also switch a CPU-only onnxruntime to onnxruntime-gpu

Run it with ComfyUI's own Python (`python_embeded\\python.exe` on the Windows portable build). The face
models run once per reference image, so the CPU runtime is fine too.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

log = logging.getLogger("PuLID-Flux install")

CPU, GPU = "onnxruntime", "onnxruntime-gpu"
# onnxruntime-gpu on PyPI: <= 1.26.x links libcudart.so.12, >= 1.27.0 links libcudart.so.13.
GPU_SPEC_BY_CUDA_MAJOR = {12: "onnxruntime-gpu>=1.23,<1.27", 13: "onnxruntime-gpu>=1.27"}
REPAIR_FLAG = "--repair-onnxruntime"
SCRIPT = str(Path(__file__).resolve())


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
    """The pip steps that leave a working onnxruntime for the face models. Pure: returns (steps, warnings).

    cpu/gpu: installed versions of onnxruntime / onnxruntime-gpu (None if absent).
    torch_cuda: torch.version.cuda ("12.8", "13.0", or None for CPU/ROCm/MPS builds).
    mode: "auto" repairs a GPU build that is installed, "gpu" also switches a CPU runtime to the GPU build,
    "cpu" keeps the CPU build.
    """
    if mode not in ("auto", "gpu", "cpu"):
        raise ValueError(f"onnxruntime mode {mode!r}: use auto, gpu or cpu")
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
        why = (f"{GPU} {gpu} is built for CUDA {_gpu_cuda_major(gpu)}, torch for CUDA {major}"
               if gpu is not None and not gpu_major_ok else f"{GPU} for torch's CUDA {major}")
        steps.append(Step(("install", "--force-reinstall", "--no-deps", spec if not gpu_major_ok else f"{GPU}=={gpu}"),
                          why))
    return steps, warnings


def _gpu_cuda_major(version: str) -> int:
    major, minor = (int(x) for x in version.split(".")[:2])
    return 13 if (major, minor) >= (1, 27) else 12


def command(python: str, step: Step) -> str:
    """The shell line a user can paste to run one step with ComfyUI's Python."""
    return shlex.join([python, "-m", "pip", *step.pip_args])


def report(steps: list[Step], warnings: list[str], python: str, mode: str) -> list[str]:
    """Log lines for the default (report-only) run: what is wrong and the exact commands that fix it."""
    lines = [f"warning: {w}" for w in warnings]
    if steps:
        lines.append("onnxruntime-gpu needs a repair for the face models: " + "; ".join(s.why for s in steps))
        lines.append("fix it with these commands (ComfyUI's Python), or run: "
                     + shlex.join([python, SCRIPT, REPAIR_FLAG] + (["--gpu"] if mode == "gpu" else [])))
        lines += ["    " + command(python, s) for s in steps]
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(REPAIR_FLAG, dest="repair", action="store_true",
                   help="run the pip commands that restore onnxruntime-gpu (otherwise they are only logged)")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--gpu", action="store_const", dest="mode", const="gpu",
                      help="want onnxruntime-gpu even if only the CPU build is installed")
    kind.add_argument("--cpu", action="store_const", dest="mode", const="cpu", help="keep the CPU build")
    a = p.parse_args(argv)
    mode = a.mode or "auto"
    logging.basicConfig(level=logging.INFO, format="[PuLID-Flux] %(message)s")
    cuda, available = _torch_cuda()
    steps, warnings = plan(_installed(CPU), _installed(GPU), cuda, mode)
    if not a.repair:
        for line in report(steps, warnings, sys.executable, mode):
            (log.warning if line.startswith(("warning", "onnxruntime-gpu needs")) else log.info)(line)
        if not steps and available and _installed(GPU) is None:
            log.info("insightface runs on the CPU (fine: once per reference image). For the GPU: "
                     "%s", shlex.join([sys.executable, SCRIPT, REPAIR_FLAG, "--gpu"]))
        return 0
    for w in warnings:
        log.warning(w)
    if not steps:
        log.info("onnxruntime needs no repair")
    for step in steps:
        log.info("%s: %s", step.why, command(sys.executable, step))
        subprocess.run([sys.executable, "-m", "pip", *step.pip_args], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
