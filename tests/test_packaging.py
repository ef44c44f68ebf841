"""Publishing and dependencies: registry metadata, the published archive, declared requirements, timm floor.

* pyproject.toml's dependencies equal requirements.txt's; every package the runtime code imports is declared
  (or is ComfyUI's / deliberately left to insightface, named below).
* ``comfy node validate`` and ``comfy node pack`` (comfy-cli from PyPI, in its own venv under the cache)
  pass, and the packed archive holds the runtime files and none of the developer ones (.comfyignore).
* timm at the declared floor (pip --target under the cache, never the test venv) passes the EVA golden
  tests; the release below it gets the tower's clear "too old" error.
Tests that need PyPI skip with one line saying why when it cannot be reached.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from _e2e.tools import ToolUnavailable, pip_target, tool_venv
from conftest import GOLDEN_DIR, ROOT

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11+")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
RUNTIME = ["__init__.py", "nodes", "integration", "pulid", "encoders", "likeness"]
# import name -> distribution declared for it
DECLARED_FOR = {"numpy": "numpy", "safetensors": "safetensors", "insightface": "insightface", "facexlib": "facexlib",
                "cv2": "opencv-python", "timm": "timm", "PIL": "pillow"}
# imported but deliberately not declared
NOT_DECLARED = {
    "torch": "ComfyUI's own (its requirements pin the build for the user's GPU)",
    "onnxruntime": "comes with insightface; the user may hold the CPU or the GPU build (install.py)",
    "comfy": "ComfyUI", "comfy_api": "ComfyUI", "comfy_extras": "ComfyUI", "comfy_execution": "ComfyUI",
    "folder_paths": "ComfyUI",
}
TIMM_BELOW_FLOOR = "1.0.22"  # the timm release before the floor: no init_non_persistent_buffers on its RoPE


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].lower().replace("_", "-")


def _norm(req: str) -> str:
    return req.replace(" ", "").lower()


def requirements() -> list[str]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return [ln.split("#")[0].strip() for ln in lines if ln.split("#")[0].strip()]


def test_pyproject_dependencies_equal_requirements_txt():
    assert sorted(map(_norm, PYPROJECT["project"]["dependencies"])) == sorted(map(_norm, requirements()))


def _imported_modules() -> dict[str, set[str]]:
    """Top-level modules the runtime code imports (import statements and encoders' lazy ``require``)."""
    found: dict[str, set[str]] = {}
    files = [ROOT / "__init__.py", *[p for d in RUNTIME[1:] for p in (ROOT / d).rglob("*.py")]]
    for path in files:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif (isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("require", "import_module")
                  and node.args and isinstance(node.args[0], ast.Constant)):
                names = [node.args[0].value]
            for n in names:
                found.setdefault(n.split(".")[0], set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_imported_package_is_declared():
    declared = {_name(r) for r in requirements()}
    third_party = {m: f for m, f in _imported_modules().items() if m not in sys.stdlib_module_names}
    assert {"cv2", "timm", "facexlib", "insightface"} <= set(third_party), "the lazy imports were not found"
    for module, files in sorted(third_party.items()):
        if module in NOT_DECLARED:
            assert _name(module) not in declared, f"{module} is listed, but {NOT_DECLARED[module]}"
            continue
        assert module in DECLARED_FOR, f"{module} (imported in {sorted(files)}) is not declared in requirements.txt"
        assert DECLARED_FOR[module] in declared, f"{module}: add {DECLARED_FOR[module]} to requirements.txt"


def test_registry_metadata():
    project, comfy = PYPROJECT["project"], PYPROJECT["tool"]["comfy"]
    assert project["license"] == {"file": "LICENSE"}
    license_text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0" in license_text and "END OF TERMS" in license_text
    assert {"Repository", "Issues", "Documentation"} <= set(project["urls"])
    icon = comfy["Icon"].rsplit("/", 1)[-1]
    assert (ROOT / icon).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"Icon {comfy['Icon']!r} is not a PNG shipped here"
    assert comfy["Icon"].startswith(project["urls"]["Repository"].replace("github.com", "raw.githubusercontent.com"))
    assert comfy["requires-comfyui"].startswith(">=") and "<" not in comfy["requires-comfyui"]
    assert comfy["PublisherId"] and comfy["DisplayName"] and project["version"]
    publish = (ROOT / ".github" / "workflows" / "publish.yml").read_text()
    assert "uses: Comfy-Org/publish-node-action@" in publish and "REGISTRY_ACCESS_TOKEN" in publish
    assert re.search(r"paths:\s*\n\s*- \"pyproject.toml\"", publish)


def _comfy_cli() -> Path:
    try:
        python = tool_venv("comfy-cli", ["comfy-cli", "ruff"])
    except ToolUnavailable as e:
        pytest.skip(f"comfy-cli cannot be installed here: {e}")
    return python.parent / "comfy"


def _tracked_copy(dest: Path) -> Path:
    """The files a clone would have (tracked + new, minus ignored) copied to dest, so packing writes no file here."""
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard"], check=True,
                             capture_output=True, text=True).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        out = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file() and ".git" not in p.parts
               and "__pycache__" not in p.parts]
    for rel in filter(None, out):
        if (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    if shutil.which("git"):  # comfy node pack archives the git-tracked files
        subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
        subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    return dest


def test_comfy_node_validate_and_pack(tmp_path):
    comfy = _comfy_cli()
    pack = _tracked_copy(tmp_path / "pack")
    env = dict(os.environ, HOME=str(tmp_path / "home"))
    for cmd in (["node", "validate"], ["node", "pack"]):
        r = subprocess.run([str(comfy), "--skip-prompt", "--no-enable-telemetry", *cmd], cwd=pack, env=env,
                           capture_output=True, text=True, timeout=300)
        out = r.stdout.lower()
        assert r.returncode == 0 and "error" not in out and "warning" not in out, f"comfy {' '.join(cmd)}:\n{r.stdout}{r.stderr}"
    names = set(zipfile.ZipFile(next(pack.glob("*.zip"))).namelist())
    for shipped in ["__init__.py", "install.py", "requirements.txt", "pyproject.toml", "LICENSE", "README.md",
                    "icon.png", "nodes/apply.py", "integration/patch.py", "encoders/eva_clip/tower.py", "likeness/sheet.py",
                    "workflows/pulid_flux_basic.json", "web/node_text.js"]:
        assert shipped in names, f"{shipped} missing from the published archive"
    for dev in ("tests/", "bench/", "scripts/", ".ci/", ".github/"):
        assert not [n for n in names if n.startswith(dev)], f"{dev} must stay out of the published archive"


def _timm_dir(version: str) -> Path:
    try:
        return pip_target(f"timm-{version}", [f"timm=={version}"])
    except ToolUnavailable as e:
        pytest.skip(f"timm {version} cannot be downloaded here: {e}")


def _timm_floor() -> str:
    floors = [r for r in requirements() if _name(r) == "timm"]
    assert floors, "requirements.txt must declare timm"
    return re.search(r">=\s*([0-9.]+)", floors[0]).group(1)


def _run_with_timm(timm_dir: Path, args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(timm_dir), os.environ.get("PYTHONPATH", "")]),
               PULID_GOLDEN_DIR=str(GOLDEN_DIR))
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.skipif(not GOLDEN_DIR.is_dir(), reason=f"golden tensors not found at {GOLDEN_DIR}")
def test_timm_floor_passes_the_eva_golden_tests():
    floor = _timm_floor()
    from conftest import import_pack

    import_pack()
    from comfyui_pulid_flux.encoders.eva_clip import tower

    assert tower.TIMM_MIN_VERSION == floor, "the tower's error message and requirements.txt name other floors"
    r = _run_with_timm(_timm_dir(floor), ["-m", "pytest", "-p", "no:cacheprovider", "-q", "-x",
                                          "tests/test_eva_clip.py"])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "passed" in r.stdout and "skipped" not in r.stdout, r.stdout[-1500:]


CHECK_OLD = """
import json, sys
sys.path.insert(0, "tests")
from conftest import import_pack
import_pack()
import timm
from comfyui_pulid_flux.encoders import MissingDependencyError
from comfyui_pulid_flux.encoders.eva_clip import EvaVisionTower
from _tiny_faces import tiny_eva_config
try:
    EvaVisionTower.empty(tiny_eva_config())
except MissingDependencyError as e:
    print(json.dumps({"timm": timm.__version__, "error": str(e)}))
"""


def test_timm_below_floor_gets_a_clear_error():
    r = _run_with_timm(_timm_dir(TIMM_BELOW_FLOOR), ["-c", CHECK_OLD])
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["timm"] == TIMM_BELOW_FLOOR
    assert "too old" in out["error"] and f"timm>={_timm_floor()}" in out["error"]
