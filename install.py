"""Check the onnxruntime the face models will use; installs and uninstalls nothing unless asked.

ComfyUI-Manager runs this file after it installs requirements.txt. insightface 2.x depends on the CPU
`onnxruntime`; `onnxruntime` and `onnxruntime-gpu` write the same `onnxruntime/` package, so installing
insightface next to `onnxruntime-gpu` silently replaces the GPU build while `pip list` still shows both.
Also, onnxruntime-gpu <= 1.26 links CUDA 12 and >= 1.27 links CUDA 13: a build for the other CUDA major
than torch's cannot load its CUDA provider.

    python install.py                        report only: logs the exact pip commands that would fix it
    python install.py --repair-onnxruntime   run those pip commands (the only mode that changes packages)
    python install.py --repair-onnxruntime --gpu   also switch a CPU-only onnxruntime to onnxruntime-gpu
    python install.py --models [--accept-insightface-licence]   fetch the model files (fetch_models.py)

`--models` fetches PuLID, EVA-CLIP, antelopev2 and facexlib into the folders the loaders read (ComfyUI's
models/ and its extra_model_paths.yaml), each checked by size and sha256 before it is put in place. Options:
--comfyui DIR / --models-dir DIR, --only GROUP [--folder DIR], --dry-run, --base-url URL (a mirror holding the
files by name; for a proxy set HTTPS_PROXY). The insightface models are for non-commercial research only:
they are fetched only with --accept-insightface-licence.

Run it with ComfyUI's own Python (`python_embeded\\python.exe` on the Windows portable build). The face
models run once per reference image, so the CPU runtime is fine too.
"""

from __future__ import annotations

import argparse
import importlib.util
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


def _fetch_models():
    spec = importlib.util.spec_from_file_location("pulid_flux_fetch_models", Path(__file__).absolute().parent
                                                  / "fetch_models.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def models(a, files=None) -> int:
    """``--models``: fetch (or with --dry-run, list) the model files; ``files`` overrides the table (tests)."""
    fm = _fetch_models()
    table = fm.load_table()
    files = files if files is not None else table.FILES
    if a.only:
        files = [f for f in files if f.group in a.only]
    root = fm.comfyui_root(a.comfyui)
    yaml_files = [Path(p) for p in a.extra_model_paths_config]
    if root is not None and (root / "extra_model_paths.yaml").is_file():
        yaml_files.insert(0, root / "extra_model_paths.yaml")
    try:
        return fm.run(files, root=root, models_dir=Path(a.models_dir).absolute() if a.models_dir else None,
                      folder=Path(a.folder).absolute() if a.folder else None, yaml_files=yaml_files,
                      base_url=a.base_url, dry_run=a.dry_run, accept_non_commercial=a.accept_insightface_licence,
                      accept_flag=table.ACCEPT_FLAG)
    except fm.FetchError as e:
        log.error("%s", e)
        return 1


def _model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model files (--models)")
    g.add_argument("--models", action="store_true", help="fetch the model files (nothing else is changed)")
    where = g.add_mutually_exclusive_group()
    where.add_argument("--comfyui", metavar="DIR", help="ComfyUI folder (default: the one this pack is in)")
    where.add_argument("--models-dir", metavar="DIR", help="a models folder (files go to DIR/pulid, ...)")
    g.add_argument("--extra-model-paths-config", metavar="YAML", action="append", default=[],
                   help="also read this extra_model_paths.yaml (as ComfyUI's option of that name)")
    g.add_argument("--only", action="append", choices=["pulid", "eva_clip", "insightface", "facexlib"],
                   help="fetch only this group (repeatable)")
    g.add_argument("--folder", metavar="DIR", help="with one --only: put the files exactly in DIR")
    g.add_argument("--dry-run", action="store_true", help="print what would be fetched where; change nothing")
    g.add_argument("--base-url", metavar="URL", help="fetch <URL>/<file name> instead (a mirror)")
    g.add_argument("--accept-insightface-licence", action="store_true",
                   help="fetch the insightface antelopev2 files: non-commercial research use only")


def main(argv: list[str] | None = None, files=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _model_args(p)
    p.add_argument(REPAIR_FLAG, dest="repair", action="store_true",
                   help="run the pip commands that restore onnxruntime-gpu (otherwise they are only logged)")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--gpu", action="store_const", dest="mode", const="gpu",
                      help="want onnxruntime-gpu even if only the CPU build is installed")
    kind.add_argument("--cpu", action="store_const", dest="mode", const="cpu", help="keep the CPU build")
    a = p.parse_args(argv)
    if a.folder and len(a.only or []) != 1:
        p.error("--folder needs exactly one --only GROUP")
    mode = a.mode or "auto"
    logging.basicConfig(level=logging.INFO, format="[PuLID-Flux] %(message)s")
    if a.models:
        return models(a, files)
    cuda, available = _torch_cuda()
    steps, warnings = plan(_installed(CPU), _installed(GPU), cuda, mode)
    if not a.repair:
        for line in report(steps, warnings, sys.executable, mode):
            (log.warning if line.startswith(("warning", "onnxruntime-gpu needs")) else log.info)(line)
        if _installed(CPU) is None and _installed(GPU) is None:
            log.warning("onnxruntime is not installed: insightface cannot run. Install it with: %s",
                        shlex.join([sys.executable, "-m", "pip", "install", CPU]))
        elif not steps and available and _installed(GPU) is None:
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
