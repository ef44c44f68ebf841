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
PACK_FOLDERS = {"gguf": "ComfyUI-GGUF", "teacache": "ComfyUI-TeaCache", "wavespeed": "Comfy-WaveSpeed",
                "distributed": "ComfyUI-Distributed"}
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
    """A tiny PuLID model, its PulidFlux handle, one identity, and the log of every ID term computed
    (tests/_tiny_flux.instrument_tables: ("attend", ca_index, rows, select, image_tokens, output, table))."""

    pulid_model: object
    pulid: object
    identity: object
    log: list

    def attends(self, ca_index: int | None = None) -> list:
        return [e for e in self.log if e[0] == "attend" and (ca_index is None or e[1] == ca_index)]


def make_kit(monkeypatch, hidden: int = 64, num_ca: int = 4, seed: int = 1, dtype=torch.float32) -> Kit:
    """monkeypatch: a pytest MonkeyPatch (module fixtures: pytest.MonkeyPatch(), undone at teardown)."""
    import _tiny_flux as T

    pm = T.tiny_pulid_model(hidden=hidden, num_ca=num_ca, seed=seed, dtype=dtype)
    return Kit(pm, T.pulid_patcher(pm), T.tiny_embedding(), T.instrument_tables(monkeypatch))


@pytest.fixture(scope="module")
def base():
    """A tiny real ComfyUI Flux, one per test module (bind it with ``base, kit = C.base, C.kit``)."""
    import _tiny_flux as T

    return T.tiny_flux_patcher()


@pytest.fixture(scope="module")
def kit():
    """A tiny PuLID kit (model, handle, identity, instrumented tables), one per test module."""
    mp = pytest.MonkeyPatch()
    yield make_kit(mp)
    mp.undo()


def apply_id(model, kit: Kit, **kwargs):
    """The Apply node (PuLIDFluxID_Apply) executed in-process on `model`."""
    from comfyui_pulid_flux.nodes.apply import Apply

    args = dict(weight=1.0, start_percent=0.0, end_percent=1.0, start_step=0, uncond_mode="uncond_id")
    args.update(kwargs)
    return run_node(Apply, model=model, pulid=kit.pulid, identity=kit.identity, **args)[0]


def pulid_step(kit: Kit, **kwargs):
    """The `pulid` argument of a graph function: MODEL -> MODEL through the Apply node."""
    return lambda model: apply_id(model, kit, **kwargs)


def check_combination(graph, kit: Kit, idle_costs_nothing: bool = True, **apply_kwargs) -> torch.Tensor:
    """graph(pulid) -> output tensor; pulid is None (the graph without the PuLID node) or a MODEL -> MODEL
    step the graph inserts where PuLID sits. Returns the output with PuLID at weight 1.
    idle_costs_nothing: also assert that no ID term is computed outside the window (eager sampling)."""
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
    if idle_costs_nothing:
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


# --------------------------------------------------------------------------------------- GGUF files
# A tiny Flux.1 that ComfyUI 0.33's detection sizes from the file (hidden = img_in rows, heads = hidden / 128,
# mlp_ratio 4): hidden 256 = 2 heads of 128, so every 256-wide weight can be a K-quant (blocks of 256 values
# along the last dimension). ComfyUI 0.3.64's detection fixes hidden 3072 (see gguf_flux_patcher).
GGUF_FLUX = dict(hidden_size=256, num_heads=2, mlp_ratio=4.0, axes_dim=[16, 56, 56])


def quantize_q4_k(rows):
    """Q4_K blocks (ggml's block_q4_K layout: fp16 d, fp16 dmin, 12 bytes of 6-bit scales/mins, 128 bytes of
    4-bit values) of a float32 (R, C) array, C a multiple of 256. The gguf package dequantizes Q4_K but does
    not quantize it; the tests check this writer against gguf's own dequantizer."""
    import numpy as np

    r, c = rows.shape
    x = rows.astype(np.float32).reshape(-1, 8, 32)  # super-blocks of 8 sub-blocks of 32
    lo = np.minimum(x.min(-1), 0.0)
    step = np.maximum(x.max(-1) - lo, 1e-8) / 15.0
    d = (step.max(-1) / 63.0).astype(np.float16)
    dmin = ((-lo).max(-1) / 63.0).astype(np.float16)
    d32, dmin32 = np.maximum(d.astype(np.float32), 1e-12), np.maximum(dmin.astype(np.float32), 1e-12)
    sc = np.clip(np.rint(step / d32[:, None]), 1, 63).astype(np.uint8)
    mn = np.clip(np.rint(-lo / dmin32[:, None]), 0, 63).astype(np.uint8)
    q = np.rint((x + (dmin32[:, None] * mn)[..., None]) / (d32[:, None] * sc)[..., None])
    q = np.clip(q, 0, 15).astype(np.uint8)
    scales = np.concatenate([(sc[:, :4] & 63) | ((sc[:, 4:] >> 4) << 6),
                             (mn[:, :4] & 63) | ((mn[:, 4:] >> 4) << 6),
                             (sc[:, 4:] & 15) | ((mn[:, 4:] & 15) << 4)], axis=1)
    qs = (q[:, 0::2] | (q[:, 1::2] << 4)).reshape(-1, 128)  # pairs of sub-blocks share bytes (low, high nibble)
    blocks = np.concatenate([d.view(np.uint8).reshape(-1, 2), dmin.view(np.uint8).reshape(-1, 2), scales, qs], 1)
    return blocks.reshape(r, c // 256 * 144)


def write_gguf(path: Path, state_dict: dict, qtype: str, arch: str = "flux") -> dict[str, str]:
    """A GGUF file as city96's tools/convert.py + llama-quantize lay it out: 1-D and small tensors in F32,
    2-D linear weights in `qtype` where their last dimension fits its block size, the rest in F16.
    Returns {name: type name}."""
    import gguf
    import numpy as np

    q = gguf.GGMLQuantizationType[qtype]
    block = gguf.GGML_QUANT_SIZES[q][0]
    writer = gguf.GGUFWriter(str(path), arch=arch)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    types_ = {}
    for name, t in state_dict.items():
        data = t.detach().float().cpu().numpy()
        if data.ndim <= 1 or data.size <= 1024:
            kind, raw = gguf.GGMLQuantizationType.F32, data.astype(np.float32)
        elif data.ndim != 2 or not name.endswith(".weight") or data.shape[-1] % block:  # quantise linear weights only
            kind, raw = gguf.GGMLQuantizationType.F16, data.astype(np.float16)
        elif qtype == "Q4_K":
            kind, raw = q, quantize_q4_k(data.reshape(-1, data.shape[-1]))
        else:
            kind, raw = q, gguf.quants.quantize(data, q)
        writer.add_tensor(name, raw, raw_dtype=kind)
        types_[name] = kind.name
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return types_


def gguf_flux_patcher(path: Path) -> tuple[object, str]:
    """(MODEL, route): the GGUF file through city96's loader. route "node": its UnetLoaderGGUF node, where
    ComfyUI's detection sizes a Flux from the file (0.33); route "steps" (0.3.64, whose detection fixes hidden
    3072): the node's own steps with the tiny config given: gguf_sd_loader -> Flux with GGMLOps -> GGUFModelPatcher."""
    import comfy.model_detection
    import comfy.model_management as mm
    import comfy.model_patcher
    import folder_paths

    import_pack("gguf")
    loader = sys.modules["pulid_compat_ComfyUI_GGUF.loader"]
    gnodes = sys.modules["pulid_compat_ComfyUI_GGUF.nodes"]
    sd = loader.gguf_sd_loader(str(path))
    detected = comfy.model_detection.detect_unet_config(sd, "")
    if detected.get("hidden_size") == sd["img_in.weight"].shape[0]:
        folder_paths.add_model_folder_path("diffusion_models", str(path.parent))
        return run_node(gnodes.UnetLoaderGGUF, unet_name=path.name)[0], "node"
    import _tiny_flux as T
    import comfy.supported_models

    ops = sys.modules["pulid_compat_ComfyUI_GGUF.ops"].GGMLOps()
    mc = comfy.supported_models.Flux(T.flux_unet_config(**GGUF_FLUX))
    mc.custom_operations = ops
    mc.set_inference_dtype(torch.float32, None)
    model = mc.get_model({})
    model.load_model_weights(sd, "")
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                               offload_device=mm.unet_offload_device())
    return gnodes.GGUFModelPatcher.clone(patcher), "steps"
