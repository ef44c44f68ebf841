#!/usr/bin/env python3
"""Developer entry point: one venv per ComfyUI version, then tests or the demo.

    python3 scripts/dev.py setup  [--versions 0.3.64 0.33.0]
    python3 scripts/dev.py test   [--versions ...] [-- extra pytest args]
    python3 scripts/dev.py demo   [--models DIR] [--version 0.33.0]

Standard library only: it runs with the system Python before any venv exists.
ComfyUI is found at $COMFYUI_ROOT (a checkout of that version, or a folder holding
ComfyUI-<version>/), else unpacked in the cache, else unpacked there from
../shared/comfyui/ComfyUI-<version>.tar.gz, else cloned at the pinned tag when the network
allows (short timeout). Without any ComfyUI the tests that need it skip with one line saying
how to get it, except under CI=true, where a missing ComfyUI fails the run.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

log = logging.getLogger("pulid-dev")

PACK = Path(__file__).resolve().parent.parent
VERSIONS = ("0.3.64", "0.33.0")
TORCH = ("torch==2.14.1", "torchvision==0.29.1")
COMFYUI_GIT = "https://github.com/comfyanonymous/ComfyUI"
SHARED = PACK.parent / "shared"
CACHE = Path(os.environ.get("PULID_CACHE_DIR", Path.home() / ".cache" / "comfyui-pulid-flux"))
# ComfyUI requirements installed separately: torch/torchvision are pinned above; no torchaudio wheel is
# built for torch 2.14.1, and ComfyUI >= 0.2x imports torchaudio in comfy.sd, so the newest one is
# installed without its torch pin (measured: imports and resamples correctly beside torch 2.14.1).
SKIP_COMFY_REQS = re.compile(r"^\s*(torch|torchvision|torchaudio)\s*($|[<>=!~;#])")
TORCHAUDIO_NO_DEPS = "torchaudio==2.11.0"


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    log.info("$ %s", " ".join(str(c) for c in cmd))
    return subprocess.run([str(c) for c in cmd], check=True, **kw)


def comfyui_version(root: Path) -> str | None:
    f = root / "comfyui_version.py"
    if not f.is_file():
        return None
    m = re.search(r'__version__\s*=\s*"([^"]+)"', f.read_text())
    return m.group(1) if m else None


def find_comfyui(version: str, clone: bool = True) -> Path | None:
    candidates = []
    env = os.environ.get("COMFYUI_ROOT")
    if env:
        candidates += [Path(env), Path(env) / f"ComfyUI-{version}"]
    candidates.append(CACHE / f"ComfyUI-{version}")
    for c in candidates:
        if comfyui_version(c) == version:
            return c.resolve()
    if not clone:
        return None
    dest = CACHE / f"ComfyUI-{version}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    archive = SHARED / "comfyui" / f"ComfyUI-{version}.tar.gz"
    if archive.is_file():
        run(["tar", "-xzf", archive, "-C", dest.parent])
        if comfyui_version(dest) == version:
            return dest
        log.warning("%s did not unpack to %s", archive, dest)
    try:
        run(["git", "clone", "--quiet", "--depth", "1", "--branch", f"v{version}", COMFYUI_GIT, dest],
            timeout=60, env={**os.environ, "GIT_TERMINAL_PROMPT": "0"})
    except (subprocess.SubprocessError, OSError) as e:
        log.warning("could not clone ComfyUI v%s (%s); its tests will skip", version, e)
        return None
    return dest if comfyui_version(dest) == version else None


def _stamp(files: list[Path]) -> str:
    h = hashlib.sha256(" ".join((*TORCH, TORCHAUDIO_NO_DEPS)).encode())
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes() if f.is_file() else b"-")
    return h.hexdigest()


def setup(version: str) -> tuple[Path, Path | None]:
    """Create or update the venv for one ComfyUI version; return (python, comfyui_root)."""
    root = find_comfyui(version)
    venv = CACHE / f"venv-{version}"
    py = venv / "bin" / "python"
    if not py.exists():
        run([sys.executable, "-m", "venv", venv])
    reqs = [PACK / "requirements.txt", PACK / "requirements-test.txt"]
    comfy_req = root / "requirements.txt" if root else None
    stamp_file = venv / ".pulid-stamp"
    stamp = _stamp(reqs + ([comfy_req] if comfy_req else []))
    if stamp_file.is_file() and stamp_file.read_text() == stamp:
        return py, root
    pip = [py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    run(pip + list(TORCH))
    if comfy_req:
        filtered = venv / "comfyui-requirements.txt"
        lines = [ln for ln in comfy_req.read_text().splitlines() if not SKIP_COMFY_REQS.match(ln)]
        filtered.write_text("\n".join(lines) + "\n")
        run(pip + ["-r", filtered] + list(TORCH))
        if any(ln.strip().startswith("torchaudio") for ln in comfy_req.read_text().splitlines()):
            run(pip + ["--no-deps", TORCHAUDIO_NO_DEPS])
    run(pip + ["-r", reqs[0], "-r", reqs[1]] + list(TORCH))
    stamp_file.write_text(stamp)
    return py, root


def test_env(root: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", NO_ALBUMENTATIONS_UPDATE="1", PYTHONDONTWRITEBYTECODE="1")
    # Idle OpenMP threads sleep instead of spinning: on a loaded 2-core machine spinning made small CPU
    # forwards ~100x slower (measured); numerics are unaffected.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env.setdefault("PULID_GOLDEN_DIR", str((SHARED / "golden").resolve()))
    env.setdefault("PULID_THIRDPARTY_DIR", str((SHARED / "thirdparty").resolve()))
    if root:
        env["COMFYUI_ROOT"] = str(root)
    else:
        env.pop("COMFYUI_ROOT", None)
    return env


def cmd_test(args: argparse.Namespace) -> int:
    failures = []
    for i, version in enumerate(args.versions):
        py, root = setup(version)
        if root is None and os.environ.get("CI") == "true":
            log.error("CI: ComfyUI %s not found (COMFYUI_ROOT, cache, %s, clone); failing", version,
                      SHARED / "comfyui")
            failures.append(f"ComfyUI {version} missing")
            continue
        env = test_env(root)
        # ComfyUI-independent tests (the library's fresh-venv install) run once, with the last version
        env["PULID_RUN_ONCE_TESTS"] = "1" if i == len(args.versions) - 1 else "0"
        if i == 0:
            lint = subprocess.run([py, "-m", "ruff", "check", PACK], env=env)
            if lint.returncode:
                failures.append("ruff")
        log.info("=== pytest against ComfyUI %s (%s) ===", version, root or "not found")
        res = subprocess.run([py, "-m", "pytest", "-p", "no:cacheprovider", *args.pytest_args],
                             cwd=PACK, env=env)
        if res.returncode != 0:
            failures.append(f"pytest@{version} (exit {res.returncode})")
    if failures:
        log.error("FAILED: %s", ", ".join(failures))
        return 1
    log.info("all checks passed for ComfyUI %s", ", ".join(args.versions))
    return 0


def cmd_setup(args: argparse.Namespace) -> int:
    for version in args.versions:
        py, root = setup(version)
        log.info("ComfyUI %s: python %s, root %s", version, py, root)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    py, root = setup(args.version)
    if root is None:
        log.error("the demo needs ComfyUI %s: set COMFYUI_ROOT to a checkout", args.version)
        return 2
    cmd = [py, PACK / "scripts" / "demo.py", "--comfyui", root]
    if args.models:
        cmd += ["--models", args.models]
    return subprocess.run([str(c) for c in cmd], env=test_env(root)).returncode


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[dev] %(message)s")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("setup", "test"):
        s = sub.add_parser(name)
        s.add_argument("--versions", nargs="+", default=list(VERSIONS))
        if name == "test":
            s.add_argument("pytest_args", nargs=argparse.REMAINDER)
    d = sub.add_parser("demo")
    d.add_argument("--version", default=VERSIONS[-1])
    d.add_argument("--models", help="a ComfyUI models folder with the real weights")
    args = p.parse_args(argv)
    if getattr(args, "pytest_args", None) and args.pytest_args[0] == "--":
        args.pytest_args = args.pytest_args[1:]
    return {"setup": cmd_setup, "test": cmd_test, "demo": cmd_demo}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
