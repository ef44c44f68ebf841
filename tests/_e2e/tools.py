"""Extra tools the packaging and frontend tests install OUTSIDE the test venv, under the cache.

* ``pip_target(name, reqs)``: ``pip install --target <cache>/tools/<name>`` with this Python's pip (timm at
  the declared floor, the newest comfyui-frontend-package); the test venv itself is never changed.
* ``tool_venv(name, reqs)``: a separate venv (comfy-cli, which brings its own dependency tree).

Both return the path, or raise ``ToolUnavailable`` with one line saying why (no network, no pip); the
tests turn that into a skip. A lock file serialises two pytest processes; a finished install is marked with
a stamp holding its requirements, so it is reused until the requirements change (or ``max_age_s`` passes).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import shutil
import subprocess
import sys
import time
import venv
from pathlib import Path

from .cache import CACHE_DIR

TOOLS_DIR = CACHE_DIR.parent / "tools"
STAMP = ".pulid-tool.json"


class ToolUnavailable(RuntimeError):
    pass


@contextlib.contextmanager
def _locked(name: str):
    TOOLS_DIR.mkdir(parents=True, exist_ok=True)
    with open(TOOLS_DIR / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _fresh(path: Path, reqs: list[str], max_age_s: float | None) -> bool:
    try:
        stamp = json.loads((path / STAMP).read_text())
    except (OSError, ValueError):
        return False
    return stamp.get("reqs") == reqs and (max_age_s is None or time.time() - stamp.get("time", 0) < max_age_s)


def _pip(python: str, args: list[str], what: str, timeout: float = 900) -> None:
    try:
        r = subprocess.run([python, "-m", "pip", *args], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ToolUnavailable(f"cannot install {what}: {e}") from e
    if r.returncode != 0:
        last = [ln for ln in (r.stderr or r.stdout).splitlines() if ln.strip() and not ln.startswith("WARNING")]
        raise ToolUnavailable(f"cannot install {what} (pip: {last[-1] if last else r.returncode})")


def pip_target(name: str, reqs: list[str], *, max_age_s: float | None = None, no_deps: bool = True) -> Path:
    """``<tools>/<name>`` holding ``reqs`` (pip --target). A stale copy is kept if a refresh fails."""
    path = TOOLS_DIR / name
    with _locked(name):
        if _fresh(path, reqs, max_age_s):
            return path
        tmp = path.with_name(name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            _pip(sys.executable, ["install", "--quiet", "--disable-pip-version-check", "--target", str(tmp),
                                  *(["--no-deps"] if no_deps else []), *reqs], " ".join(reqs))
        except ToolUnavailable:
            shutil.rmtree(tmp, ignore_errors=True)
            if (path / STAMP).is_file() and json.loads((path / STAMP).read_text()).get("reqs") == reqs:
                return path  # offline: the last good copy
            raise
        (tmp / STAMP).write_text(json.dumps({"reqs": reqs, "time": time.time()}))
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)
        return path


def tool_venv(name: str, reqs: list[str]) -> Path:
    """The ``python`` of a venv ``<tools>/<name>`` with ``reqs`` installed."""
    path = TOOLS_DIR / name
    python = path / "bin" / "python"
    with _locked(name):
        if _fresh(path, reqs, None) and python.is_file():
            return python
        shutil.rmtree(path, ignore_errors=True)
        try:
            venv.EnvBuilder(with_pip=True).create(path)
        except (OSError, subprocess.CalledProcessError) as e:
            shutil.rmtree(path, ignore_errors=True)
            raise ToolUnavailable(f"cannot create a venv for {name}: {e}") from e
        try:
            _pip(str(python), ["install", "--quiet", "--disable-pip-version-check", *reqs], " ".join(reqs))
        except ToolUnavailable:
            shutil.rmtree(path, ignore_errors=True)
            raise
        (path / STAMP).write_text(json.dumps({"reqs": reqs, "time": time.time()}))
        return python
