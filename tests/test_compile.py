"""torch.compile as core's TorchCompileModel node does it: PuLID adds no graph break and no recompile over a
whole sampling run at one resolution (cfg 1 and true CFG), compared with the same model without PuLID."""

from __future__ import annotations

import pytest
import torch
from conftest import COMFYUI_ROOT, NO_COMFYUI, setup_comfyui

if COMFYUI_ROOT is None:
    pytest.skip(NO_COMFYUI, allow_module_level=True)
setup_comfyui()

import _tiny_flux as T  # noqa: E402

from comfyui_pulid_flux.integration.patch import apply_pulid_flux  # noqa: E402


def compiled(model):
    """What core's TorchCompileModel node returns (its own code), on the aot_eager backend (CPU, fast)."""
    import comfy_extras.nodes_torch_compile as core
    from comfy_api.torch_helpers import set_torch_compile_wrapper

    m = model.clone()
    guard_filter = getattr(core, "skip_torch_compile_dict", None)  # the node's guard filter (newer ComfyUI)
    set_torch_compile_wrapper(model=m, backend="aot_eager",
                              options=None if guard_filter is None else {"guard_filter_fn": guard_filter})
    return m


def counts(model, **sample_kwargs) -> dict:
    """Graph breaks, recompiles and frames compiled by dynamo over one sampling run."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    out = T.sample(model, **sample_kwargs)
    assert torch.isfinite(out).all()
    return {"graph_breaks": sum(counters["graph_break"].values()),
            "recompiles": sum(counters["recompiles"].values()) if "recompiles" in counters else 0,
            "frames": counters["stats"]["unique_graphs"], "out": out}


@pytest.fixture()
def pytorch_attention(monkeypatch):
    """Flux with PyTorch attention, the GPU default (the CPU default, sub-quadratic attention, asks psutil
    for free memory on every call, which breaks the graph in plain Flux already)."""
    import comfy.ldm.flux.math
    import comfy.ldm.modules.attention

    monkeypatch.setattr(comfy.ldm.flux.math, "optimized_attention", comfy.ldm.modules.attention.attention_pytorch)


@pytest.fixture(scope="module")
def models():
    return T.tiny_flux_patcher(depth=2, depth_single_blocks=4), T.pulid_patcher(T.tiny_pulid_model(num_ca=2)), {}


@pytest.mark.parametrize("cfg,mode,start_step", [(1.0, "uncond_id", 0), (2.0, "uncond_id", 2), (2.0, "none", 0)])
def test_pulid_adds_no_graph_break_nor_recompile(pytorch_attention, models, cfg, mode, start_step):
    base, pp, plain_counts = models
    kwargs = dict(steps=3, cfg=cfg, negative=T.tiny_cond(1, tokens=7))  # same text length: one batched call
    if cfg not in plain_counts:  # the plain model's counts, once per cfg
        plain_counts[cfg] = counts(compiled(base), **kwargs)
    plain = plain_counts[cfg]
    pulid = apply_pulid_flux(base, pp, T.tiny_embedding(), uncond_mode=mode, start_step=start_step,
                             mask=torch.ones(1, 32, 32))
    patched = counts(compiled(pulid), **kwargs)
    assert (patched["graph_breaks"], patched["recompiles"], patched["frames"]) == \
        (plain["graph_breaks"], plain["recompiles"], plain["frames"])
    eager = T.sample(pulid, **kwargs)
    torch.testing.assert_close(patched["out"], eager, atol=1e-5, rtol=1e-5)  # the same images, gating included
    assert not torch.equal(eager, plain["out"])
