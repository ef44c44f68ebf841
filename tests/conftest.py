"""Shared test plumbing.

* The pack is imported under the fixed name ``comfyui_pulid_flux`` (its folder name differs between
  a git clone, a registry install and CI), exactly as ComfyUI imports a custom node: as a package
  whose submodules use relative imports.
* ComfyUI is found through ``$COMFYUI_ROOT`` (set by ``scripts/dev.py test``). Tests that need it use
  the ``comfyui`` fixture (or the ``needs_comfyui`` mark) and skip with one line saying how to get it.
* Golden tensors come from ``$PULID_GOLDEN_DIR`` (default ``../shared/golden``); every constructor
  argument and shape is read from the sidecar JSON.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACK_NAME = "comfyui_pulid_flux"
GOLDEN_DIR = Path(os.environ.get("PULID_GOLDEN_DIR", ROOT.parent / "shared" / "golden")).resolve()
NO_COMFYUI = (
    "ComfyUI not found: run the tests through scripts/test.sh, or set COMFYUI_ROOT to a ComfyUI "
    "checkout (0.3.64 or 0.33.0), e.g. git clone --branch v0.33.0 https://github.com/comfyanonymous/ComfyUI"
)


def _find_comfyui() -> Path | None:
    env = os.environ.get("COMFYUI_ROOT")
    if env and (Path(env) / "comfy" / "model_patcher.py").is_file():
        return Path(env).resolve()
    return None


COMFYUI_ROOT = _find_comfyui()
_comfy_ready = False


def import_pack():
    """Import the repository as the package ``comfyui_pulid_flux`` (idempotent)."""
    if PACK_NAME in sys.modules:
        return sys.modules[PACK_NAME]
    spec = importlib.util.spec_from_file_location(
        PACK_NAME, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = module
    spec.loader.exec_module(module)
    return module


def setup_comfyui() -> Path:
    """Put ComfyUI on sys.path in CPU mode; skip the calling test if there is none."""
    global _comfy_ready
    if COMFYUI_ROOT is None:
        pytest.skip(NO_COMFYUI)
    if not _comfy_ready:
        if str(COMFYUI_ROOT) not in sys.path:
            sys.path.insert(0, str(COMFYUI_ROOT))
        import comfy.cli_args

        comfy.cli_args.args.cpu = True  # a GPU-less box with the CUDA wheel may not initialise CUDA
        import comfy.model_management  # noqa: F401

        # ComfyUI's top-level nodes.py, imported now: when pytest imports the pack's __init__.py from a checkout
        # whose folder name is not an identifier, it puts the checkout first on sys.path, where the pack's own
        # nodes/ would shadow it for every later `import nodes` of ComfyUI.
        import nodes  # noqa: F401

        _comfy_ready = True
    return COMFYUI_ROOT


@pytest.fixture
def comfyui() -> Path:
    return setup_comfyui()


def pytest_runtest_setup(item):
    if item.get_closest_marker("comfyui"):
        setup_comfyui()


def pytest_report_header(config):
    return [
        f"ComfyUI: {COMFYUI_ROOT or 'not found (tests that need it skip)'}",
        f"golden: {GOLDEN_DIR}",
    ]


@pytest.fixture(scope="session")
def pack():
    return import_pack()


# --- golden vectors ---------------------------------------------------------------------------


class Golden:
    """One golden set: ``meta`` (the sidecar JSON), ``weights`` and ``io`` tensors (cloned)."""

    def __init__(self, name: str):
        from safetensors.torch import load_file

        sidecar = GOLDEN_DIR / f"{name}.json"
        if not sidecar.is_file():
            pytest.fail(f"golden sidecar {sidecar} is missing: set PULID_GOLDEN_DIR to a golden directory")
        self.name = name
        self.meta = json.loads(sidecar.read_text())
        # Clone: safetensors buffers are only 8-byte aligned, and CPU GEMM then takes another kernel path;
        # clones are bit-exact with the official modules.
        self.weights = {}
        if (GOLDEN_DIR / f"{name}.weights.safetensors").is_file():
            self.weights = {k: v.clone() for k, v in load_file(GOLDEN_DIR / f"{name}.weights.safetensors").items()}
        self.io = {k: v.clone() for k, v in load_file(GOLDEN_DIR / f"{name}.io.safetensors").items()}

    def seq(self, prefix: str) -> list:
        """``in.x.0``, ``in.x.1``, ... as a list, in index order."""
        keys = sorted((k for k in self.io if k.startswith(prefix + ".")), key=lambda k: int(k.rsplit(".", 1)[1]))
        return [self.io[k] for k in keys]


@pytest.fixture(scope="session")
def golden():
    cache: dict[str, Golden] = {}

    def get(name: str) -> Golden:
        if name not in cache:
            cache[name] = Golden(name)
        return cache[name]

    return get


def tolerances() -> dict:
    return json.loads((GOLDEN_DIR / "tolerances.json").read_text())


# A bf16 port rounds in other places than the official bf16 run, so its error against the fp32 golden may
# exceed the official code's own; by at most this factor.
BF16_FACTOR = 1.5


def bf16_bound(name: str) -> float:
    """Bound for a bf16 result's rel_l2 against the fp32 golden: the official code's own bf16-vs-fp32 rel_l2
    on this golden set (tolerances.json[name]) times BF16_FACTOR."""
    return BF16_FACTOR * tolerances()[name]["rel_l2"]


def rel_l2(ref, x) -> float:
    ref = ref.double()
    return float((ref - x.double()).norm() / ref.norm())
