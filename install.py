"""Check the onnxruntime the face models will use; installs and uninstalls nothing unless asked.

ComfyUI-Manager runs this file after it installs requirements.txt. insightface 2.x depends on the CPU
`onnxruntime`; `onnxruntime` and `onnxruntime-gpu` write the same `onnxruntime/` package, so installing
insightface next to `onnxruntime-gpu` silently replaces the GPU build while `pip list` still shows both.
Also, onnxruntime-gpu <= 1.26 links CUDA 12 and >= 1.27 links CUDA 13: a build for the other CUDA major
than torch's cannot load its CUDA provider.

    python install.py                        report only: logs the exact pip commands that would fix it
    python install.py --repair-onnxruntime   run those pip commands (the only mode that changes packages)
    python install.py --repair-onnxruntime --gpu   also switch a CPU-only onnxruntime to onnxruntime-gpu
    python install.py --models [--accept-insightface-licence]   fetch the model files

`--models` fetches PuLID, EVA-CLIP, antelopev2 and facexlib into the folders the loaders read (ComfyUI's
models/ and its extra_model_paths.yaml), each checked by size and sha256 before it is put in place. Options:
--comfyui DIR / --models-dir DIR, --only GROUP [--folder DIR], --dry-run, --base-url URL (a mirror holding the
files by name; for a proxy set HTTPS_PROXY). The insightface models are for non-commercial research only:
they are fetched only with --accept-insightface-licence. Each file is downloaded to `<name>.part` (resumed with
an HTTP Range request), checked, then renamed; a file already present and passing the check is skipped. An
unpinned file (no sha256 in the table) is checked by size and its sha256 recorded in `<name>.sha256` for later runs.

Run it with ComfyUI's own Python (`python_embeded\\python.exe` on the Windows portable build). The face
models run once per reference image, so the CPU runtime is fine too.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import importlib.util
import logging
import os
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

log = logging.getLogger("PuLID-Flux install")

CPU, GPU = "onnxruntime", "onnxruntime-gpu"
# onnxruntime-gpu on PyPI: <= 1.26.x links libcudart.so.12, >= 1.27.0 links libcudart.so.13.
GPU_SPEC_BY_CUDA_MAJOR = {12: "onnxruntime-gpu>=1.23,<1.27", 13: "onnxruntime-gpu>=1.27"}
REPAIR_FLAG = "--repair-onnxruntime"
SCRIPT = str(Path(__file__).resolve())
HERE = Path(__file__).absolute().parent  # absolute(), not resolve(): keep a symlinked custom_nodes/ entry


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


# ----------------------------------------------------------------------------------------- model files
CHUNK = 1 << 20
TIMEOUT_S = 60
USER_AGENT = "comfyui-pulid-flux-id install.py"


def load_table():
    """nodes/model_files.py loaded by path (nodes/__init__.py, which needs ComfyUI, is not run)."""
    spec = importlib.util.spec_from_file_location("pulid_flux_model_files", HERE / "nodes" / "model_files.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


class FetchError(RuntimeError):
    pass


# --------------------------------------------------------------------------------------------- folders
def comfyui_root(explicit: str | None) -> Path | None:
    """--comfyui, else the ComfyUI this pack sits in (``<ComfyUI>/custom_nodes/<pack>/``)."""
    if explicit:
        return Path(explicit).expanduser().absolute()
    return HERE.parent.parent if HERE.parent.name == "custom_nodes" else None


def _read_yaml(path: Path) -> dict:
    try:
        import yaml  # ComfyUI's own requirement (PyYAML); only needed when a yaml file exists
    except ImportError as e:
        raise FetchError(f"{path} needs PyYAML to be read: run this with ComfyUI's Python, or pass --models-dir") from e
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def model_folders(root: Path, yaml_files: list[Path]) -> dict[str, list[str]]:
    """folder key -> folders, in the order ComfyUI + the pack search them (utils/extra_config.py semantics:
    base_path relative to the yaml, multi-line values, is_default puts a folder first; ComfyUI's own keys list
    models/<key> first, the pack's keys (registered after the yaml is read) list it last)."""
    extra: dict[str, list[str]] = {}
    for path in yaml_files:
        for section in _read_yaml(path).values():
            if not isinstance(section, dict):
                continue
            section = dict(section)
            base = section.pop("base_path", None)
            is_default = bool(section.pop("is_default", False))
            if base:
                base = os.path.expandvars(os.path.expanduser(base))
                base = base if os.path.isabs(base) else os.path.join(path.parent, base)
            for key, value in section.items():
                key = {"unet": "diffusion_models", "clip": "text_encoders"}.get(key, key)
                for line in str(value).split("\n"):
                    if line:
                        full = os.path.normpath(os.path.join(base or path.parent, line))
                        lst = extra.setdefault(key, [])
                        if full not in lst:
                            lst.insert(0, full) if is_default else lst.append(full)
    out = {}
    for key in {"pulid", "insightface", "facexlib", "clip_vision", "text_encoders"} | set(extra):
        default = os.path.join(root, "models", key)
        own = key in ("pulid", "insightface", "facexlib")
        paths = list(extra.get(key, []))
        out[key] = (paths + [default] if own else [default] + paths) if default not in paths else paths
    return out


@dataclass
class Target:
    file: object  # model_files.ModelFile
    dest: Path  # where it is written
    present: Path | None  # an existing copy the loaders find (checked), or None


def targets(files, *, root: Path | None, models_dir: Path | None, folder: Path | None,
            yaml_files: list[Path]) -> list[Target]:
    out = []
    folders = model_folders(root, yaml_files) if root and not models_dir else {}
    for f in files:
        key, _, sub = f.directory.partition("/")
        if folder:
            candidates = [folder]
        elif models_dir:
            candidates = [models_dir / f.directory]
        else:
            candidates = [Path(p) / sub if sub else Path(p) for p in folders[key]]
        present = next((c / f.name for c in candidates if (c / f.name).is_file()), None)
        out.append(Target(f, candidates[0] / f.name, present))
    return out


# ------------------------------------------------------------------------------------------- checking
def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def problem(path: Path, f) -> str | None:
    """Why ``path`` is not the table's file ``f`` (size, then sha256 or the recorded hash), or None."""
    size = path.stat().st_size
    if f.size is not None and size != f.size:
        return f"size {size} bytes, expected {f.size}"
    record = Path(str(path) + ".sha256") if path.suffix != ".part" else None
    want = f.sha256 or (record.read_text().split()[0] if record and record.is_file() else None)
    if want is not None and (got := sha256_of(path)) != want:
        return f"sha256 {got}, expected {want}"
    return None


# ------------------------------------------------------------------------------------------- download
class Progress:
    """One line per file on stderr: name, bar, percent, MB."""

    def __init__(self, name: str, total: int | None, done: int):
        self.name, self.total, self.done, self.last = name, total, done, 0.0

    def update(self, n: int, final: bool = False) -> None:
        self.done += n
        now = time.monotonic()
        if not final and now - self.last < 0.2:
            return
        self.last = now
        mb = f"{self.done / 1e6:.1f}" + (f"/{self.total / 1e6:.1f} MB" if self.total else " MB")
        if self.total:
            frac = min(1.0, self.done / self.total)
            bar = f"[{'#' * int(30 * frac):<30}] {100 * frac:3.0f}% "
        else:
            bar = ""
        sys.stderr.write(f"\r  {self.name} {bar}{mb}" + ("\n" if final else ""))
        sys.stderr.flush()


def download(url: str, part: Path, f) -> None:
    """``url`` into ``part``, resuming from its current length with an HTTP Range request."""
    have = part.stat().st_size if part.exists() else 0
    if f.size is not None and have > f.size:
        part.unlink()
        have = 0
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, **({"Range": f"bytes={have}-"} if have else {})})
    try:
        resp = urllib.request.urlopen(req, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to fetch: the .part is complete (it is checked next)
            return
        raise FetchError(f"{url}: HTTP {e.code} {e.reason}") from e
    except (urllib.error.URLError, OSError) as e:
        raise FetchError(f"{url}: {getattr(e, 'reason', e)}") from e
    with resp:
        resume = have and resp.status == 206
        if have and not resume:
            log.info("%s: the server does not resume (HTTP %s); starting again", f.name, resp.status)
        length = resp.headers.get("Content-Length")
        sent = (int(length) + (have if resume else 0)) if length else f.size  # the length this response makes
        bar = Progress(f.name, f.size or sent, have if resume else 0)
        with open(part, "ab" if resume else "wb") as out:
            try:
                while chunk := resp.read(CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
                    if f.size is not None and bar.done > f.size:
                        break
            except (OSError, http.client.HTTPException):  # a dropped connection: reset, IncompleteRead
                pass
        bar.update(0, final=True)
    if f.size is not None and bar.done > f.size:
        part.unlink()
        raise FetchError(f"{url} sends more than the expected {f.size} bytes; nothing was kept")
    if sent is not None and bar.done < sent:
        raise FetchError(f"{url}: interrupted after {bar.done} of {sent} bytes; run the command again to resume "
                         f"from {part}")


def fetch_one(t: Target, base_url: str | None) -> None:
    f = t.file
    url = f"{base_url.rstrip('/')}/{f.name}" if base_url else f.url
    t.dest.parent.mkdir(parents=True, exist_ok=True)
    part = t.dest.with_name(t.dest.name + ".part")
    download(url, part, f)
    why = problem(part, f) if part.exists() else "nothing was downloaded"
    if why:
        part.unlink(missing_ok=True)
        raise FetchError(f"{f.name} from {url} refused: {why}. Nothing was kept; check the URL / mirror and run "
                         "the command again")
    if f.sha256 is None:  # unpinned: record its hash now, check against it from now on
        digest = sha256_of(part)
        Path(str(t.dest) + ".sha256").write_text(f"{digest}  {f.name}\n")
        log.info("%s is unpinned: its sha256 %s is recorded in %s.sha256", f.name, digest, t.dest.name)
    os.replace(part, t.dest)
    log.info("%s: checked and placed in %s", f.name, t.dest.parent)


def fetch(files, *, root: Path | None, models_dir: Path | None = None, folder: Path | None = None,
        yaml_files: list[Path] = (), base_url: str | None = None, dry_run: bool = False,
        accept_non_commercial: bool = False, accept_flag: str = "") -> int:
    """Fetch ``files``; returns the exit code (0: every file in place and checked)."""
    if root is None and models_dir is None and folder is None:
        raise FetchError("cannot tell where ComfyUI is: pass --comfyui <ComfyUI folder> or --models-dir <models folder>")
    todo = targets(files, root=root, models_dir=models_dir, folder=folder, yaml_files=list(yaml_files))
    failed, refused = [], []
    for t in todo:
        f = t.file
        size = f"{f.size / 1e6:.1f} MB" if f.size else "size unknown"
        pin = f"sha256 {f.sha256[:12]}..." if f.sha256 else "unpinned (checked by size, hash recorded)"
        log.info("%s (%s, %s) -- licence: %s", f.name, size, pin, f.licence)
        if t.present is not None:
            why = problem(t.present, f)
            if why is None:
                log.info("  present and checked: %s", t.present)
                continue
            log.warning("  %s fails its check (%s): fetching it again into %s", t.present, why, t.dest.parent)
        if f.non_commercial and not accept_non_commercial:
            log.warning("  NOT fetched: this file is for NON-COMMERCIAL use only; add %s to accept that and fetch it",
                        accept_flag)
            refused.append(f.name)
            continue
        url = f"{base_url.rstrip('/')}/{f.name}" if base_url else f.url
        if dry_run:
            part = t.dest.with_name(t.dest.name + ".part")
            resume = f" (resuming {part.stat().st_size} bytes of {part.name})" if part.exists() else ""
            log.info("  would fetch %s -> %s%s", url, t.dest, resume)
            continue
        log.info("  fetching %s -> %s", url, t.dest.parent)
        try:
            fetch_one(t, base_url)
        except FetchError as e:
            log.error("  %s", e)
            failed.append(f.name)
    if refused:
        log.warning("not fetched without %s: %s", accept_flag, ", ".join(refused))
    if failed:
        log.error("failed: %s", ", ".join(failed))
    return 1 if failed else (2 if refused else 0)


def models(a, files=None) -> int:
    """``--models``: fetch (or with --dry-run, list) the model files; ``files`` overrides the table (tests)."""
    table = load_table()
    files = files if files is not None else table.FILES
    if a.only:
        files = [f for f in files if f.group in a.only]
    root = comfyui_root(a.comfyui)
    yaml_files = [Path(p) for p in a.extra_model_paths_config]
    if root is not None and (root / "extra_model_paths.yaml").is_file():
        yaml_files.insert(0, root / "extra_model_paths.yaml")
    try:
        return fetch(files, root=root, models_dir=Path(a.models_dir).absolute() if a.models_dir else None,
                      folder=Path(a.folder).absolute() if a.folder else None, yaml_files=yaml_files,
                      base_url=a.base_url, dry_run=a.dry_run, accept_non_commercial=a.accept_insightface_licence,
                      accept_flag=table.ACCEPT_FLAG)
    except FetchError as e:
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
