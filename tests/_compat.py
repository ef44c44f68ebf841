"""Shared helpers of tests/test_compat_*.py: third-party packs, node calls, and the one compatibility check.

* Third-party packs (city96's ComfyUI-GGUF, welltop-cn's ComfyUI-TeaCache, chengzeyi's Comfy-WaveSpeed) come
  as archives from ``$PULID_THIRDPARTY_DIR`` (default ``../shared/thirdparty``); they are unpacked into one
  temporary ``custom_nodes/`` per test process and imported from there, their real code unchanged.
* ``check_combination(graph, kit)`` is the contract every combination must meet: it samples, PuLID has an
  effect (the ID cross-attentions ran), weight 0 and an inactive window are bit-identical to the same graph
  without PuLID, and the plain graph sampled afterwards equals the fresh one (nothing left patched).
"""

from __future__ import annotations

import atexit
import importlib
import importlib.util
import os
import re
import shutil
import sys
import tarfile
import tempfile
import types
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import COMFYUI_ROOT, ROOT, setup_comfyui

THIRDPARTY_DIR = Path(os.environ.get("PULID_THIRDPARTY_DIR", ROOT.parent / "shared" / "thirdparty")).resolve()
PACK_FOLDERS = {"gguf": "ComfyUI-GGUF", "teacache": "ComfyUI-TeaCache", "wavespeed": "Comfy-WaveSpeed"}
# A window that contains no model call: percent 1.0 is sigma 0, which no sampling step evaluates.
INACTIVE = dict(start_percent=1.0, end_percent=1.0)
_custom_nodes: Path | None = None


def comfy_version() -> tuple[int, ...]:
    """The version of the ComfyUI under test, from its comfyui_version.py."""
    if COMFYUI_ROOT is None:
        return ()
    text = (COMFYUI_ROOT / "comfyui_version.py").read_text()
    found = re.search(r"__version__\s*=\s*['\"]([0-9.]+)['\"]", text)
    return tuple(int(p) for p in found.group(1).split(".")) if found else ()


def custom_nodes_dir() -> Path:
    """One temporary custom_nodes/ per test process, removed at exit."""
    global _custom_nodes
    if _custom_nodes is None:
        _custom_nodes = Path(tempfile.mkdtemp(prefix="pulid-compat-custom_nodes-"))
        atexit.register(shutil.rmtree, _custom_nodes, True)
    return _custom_nodes


def archive(pack: str) -> Path:
    folder = PACK_FOLDERS[pack]
    found = sorted(THIRDPARTY_DIR.glob(f"{folder}-*.tar.gz"))
    if not found:
        pytest.skip(f"third-party pack archive {folder}-<commit>.tar.gz not found in {THIRDPARTY_DIR} "
                    f"(set PULID_THIRDPARTY_DIR)")
    return found[-1]


def unpack(pack: str, dest: Path | None = None) -> Path:
    """The pack's folder under `dest` (default: this process's custom_nodes/), unpacked once."""
    dest = dest or custom_nodes_dir()
    folder = dest / PACK_FOLDERS[pack]
    if not folder.is_dir():
        with tarfile.open(archive(pack)) as tar:
            tar.extractall(dest, filter="data")
    assert folder.is_dir(), f"{archive(pack)} did not unpack to {folder.name}/"
    return folder


def import_pack(pack: str, submodule: str | None = None) -> types.ModuleType:
    """Import a third-party pack from custom_nodes/ as ComfyUI does (a package with relative imports).

    submodule: import only that module of the package, without running its __init__ (TeaCache's __init__
    also imports its diffusers-only nodes, and diffusers is no ComfyUI requirement)."""
    setup_comfyui()
    folder = unpack(pack)
    name = "pulid_compat_" + PACK_FOLDERS[pack].replace("-", "_")
    if submodule is None:
        if name not in sys.modules:
            spec = importlib.util.spec_from_file_location(name, folder / "__init__.py",
                                                          submodule_search_locations=[str(folder)])
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[name]
                raise
        return sys.modules[name]
    if name not in sys.modules:
        package = types.ModuleType(name)
        package.__path__ = [str(folder)]
        sys.modules[name] = package
    return importlib.import_module(f"{name}.{submodule}")


def run_node(cls, **inputs) -> tuple:
    """Execute a node class in-process as ComfyUI's executor does: V3 classmethod `execute` or V1 FUNCTION."""
    if hasattr(cls, "define_schema"):
        out = cls.execute(**inputs)
        result = getattr(out, "result", None)
        return tuple(result if result is not None else out.args)
    return tuple(getattr(cls(), cls.FUNCTION)(**inputs))


# --------------------------------------------------------------------------------------- the check
@dataclass
class Kit:
    """A tiny PuLID model (its CAs logged), its handle, and one identity."""

    pulid_model: object
    pulid: object
    identity: object
    log: list

    def attends(self) -> list:
        return [e for e in self.log if e[0] == "attend"]


def make_kit(hidden: int = 64, num_ca: int = 4, seed: int = 1, dtype=torch.float32) -> Kit:
    import _tiny_flux as T

    pm = T.tiny_pulid_model(hidden=hidden, num_ca=num_ca, seed=seed, dtype=dtype)
    log = T.instrument_cas(pm)
    return Kit(pm, T.pulid_patcher(pm), T.tiny_embedding(), log)


def apply_id(model, kit: Kit, **kwargs):
    """The Apply node (PuLIDFluxID_Apply) executed in-process on `model`."""
    from comfyui_pulid_flux.nodes.apply import ApplyPulidFluxID

    args = dict(weight=1.0, start_percent=0.0, end_percent=1.0, start_step=0, uncond_mode="uncond_id")
    args.update(kwargs)
    return run_node(ApplyPulidFluxID, model=model, pulid=kit.pulid, identity=kit.identity, **args)[0]


def pulid_step(kit: Kit, **kwargs):
    """The `pulid` argument of a graph function: MODEL -> MODEL through the Apply node."""
    return lambda model: apply_id(model, kit, **kwargs)


def check_combination(graph, kit: Kit, **apply_kwargs) -> torch.Tensor:
    """graph(pulid) -> output tensor; pulid is None (the graph without the PuLID node) or a MODEL -> MODEL
    step the graph inserts where PuLID sits. Returns the output with PuLID at weight 1."""
    fresh = graph(None)
    assert torch.isfinite(fresh).all(), "the graph without PuLID does not sample finite values by itself"
    kit.log.clear()
    out = graph(pulid_step(kit, **apply_kwargs))
    assert torch.isfinite(out).all(), "PuLID made the output non-finite"
    assert kit.attends(), "the ID cross-attentions never ran"
    assert not torch.equal(out, fresh), "PuLID at weight 1 had no effect on the output"
    w0 = graph(pulid_step(kit, **{**apply_kwargs, "weight": 0.0}))
    assert torch.equal(w0, fresh), "weight 0 differs from the graph without PuLID"
    kit.log.clear()
    off = graph(pulid_step(kit, **{**apply_kwargs, **INACTIVE}))
    assert kit.attends() == [], "an inactive window still ran the ID cross-attentions"
    assert torch.equal(off, fresh), "an inactive window differs from the graph without PuLID"
    assert torch.equal(graph(None), fresh), "the plain graph after PuLID differs from the fresh one"
    return out


def block_calls(patcher, log: list, tag: str = "probe") -> object:
    """A clone whose every dit block replacement is wrapped to log (kind, index, has transformer_options) before
    calling what was there (or the original block): counts which blocks a forward really computed."""
    m = patcher.clone()
    dit = m.model_options["transformer_options"].get("patches_replace", {}).get("dit", {})
    for key, inner in list(dit.items()):
        def probe(args, extra, _key=key, _inner=inner):
            log.append((tag, *_key))
            return _inner(args, extra)

        m.set_model_patch_replace(probe, "dit", key[0], key[1])
    return m
