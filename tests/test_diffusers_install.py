"""The library install without ComfyUI: a fresh venv, ``pip install "<checkout>[diffusers]"`` from the package
registries, then the example's generate() on a tiny pipeline with random weights (tests/_diffusers_tiny.py run as a
script against the installed ``pulid_flux_id``), and no ComfyUI module imported.

torch / torchvision (several GB of CUDA wheels) come from one cached layer, installed once with
``pip install torch==2.14.1 torchvision==0.29.1`` (pip --target under the tools cache) and put on the fresh venv's
path with a .pth file; everything else is installed fresh in each run (pip's wheel cache keeps insightface's
built wheel). Skips with one line when the registries cannot be reached."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import venv

import pytest
from _e2e.tools import ToolUnavailable, pip_target
from conftest import ROOT

TORCH = ["torch==2.14.1", "torchvision==0.29.1"]


def test_fresh_venv_install_runs_the_adapter(tmp_path):
    if os.environ.get("PULID_RUN_ONCE_TESTS", "1") == "0":
        pytest.skip("independent of ComfyUI: scripts/test.sh runs it once, with the last ComfyUI version")
    start = time.monotonic()
    try:
        layer = pip_target("torch-2.14.1", TORCH, no_deps=False)
    except ToolUnavailable as e:
        pytest.skip(f"torch layer: {e}")
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = str(env_dir / "bin" / "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    with open(os.path.join(site, "torch_layer.pth"), "w") as f:
        f.write(str(layer) + "\n")
    # a copy of the checkout: setuptools builds in the source tree (build/, *.egg-info)
    src = tmp_path / "checkout"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", "__pycache__", ".venv",
                                                             ".ruff_cache", ".pytest_cache", "docs", "workflows"))
    installed = time.monotonic()
    r = subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile",
                        f"{src}[diffusers]"], capture_output=True, text=True, timeout=900)
    if r.returncode != 0 and "Could not find a version" in r.stderr + r.stdout:
        pytest.skip("package registries unreachable: " + r.stderr.strip().splitlines()[-1])
    assert r.returncode == 0, r.stderr[-3000:]
    install_s = time.monotonic() - installed
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "COMFYUI_ROOT")}
    run = subprocess.run([python, str(ROOT / "tests" / "_diffusers_tiny.py"),
                          str(ROOT / "diffusers_example" / "diffusers_pulid_flux.py")],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert run.returncode == 0 and run.stdout.strip().endswith("OK"), run.stderr[-3000:]
    where = subprocess.run([python, "-c", "import pulid_flux_id, sys; print(pulid_flux_id.__file__); "
                            "assert not [m for m in sys.modules if m.split('.')[0] in ('comfy', 'comfy_api')]"],
                           capture_output=True, text=True, cwd=tmp_path, env=env)
    assert where.returncode == 0 and where.stdout.startswith(site), where.stderr
    sys.stderr.write(f"fresh-venv install {install_s:.0f} s, total {time.monotonic() - start:.0f} s\n")
