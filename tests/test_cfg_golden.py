"""The official denoise loop (flux_denoise golden) through ComfyUI's own CFGGuider, with the Apply node's
official true-CFG start (integration/cfg.py): every case, its output and its call log (which prompt and which ID
each model call got, in order) from the golden sidecar; the negative pass is really skipped before the
start step.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from conftest import COMFYUI_ROOT, NO_COMFYUI, setup_comfyui

if COMFYUI_ROOT is None:
    pytest.skip(NO_COMFYUI, allow_module_level=True)
setup_comfyui()

import _tiny_flux as T  # noqa: E402
from comfy.patcher_extension import WrappersMP  # noqa: E402
from einops import rearrange  # noqa: E402

from comfyui_pulid_flux.integration.cfg import RUN_KEY as CFG_WRAPPER_KEY  # noqa: E402
from comfyui_pulid_flux.integration.cfg import (  # noqa: E402
    Runner,
    _runner,
    _set_runner,
    add_run_spec,
    check_cfg_start_step,
)
from comfyui_pulid_flux.integration.patch import apply_pulid_flux  # noqa: E402
from comfyui_pulid_flux.pulid import fold  # noqa: E402
from comfyui_pulid_flux.pulid.embedding import IDEmbedding  # noqa: E402

ATOL, RTOL = 1e-5, 1e-4  # Flux in fp32, as the other golden tests


def set_cfg_start(model, start_step: int, id_percents=(0.0, 1.0), id_start_step: int = 0):
    """Set the CFG start of the last Apply on `model` (a clone it owns); on a model without Apply, add one
    timing (id_percents, id_start_step) with it. 0: ComfyUI's CFG. Test helper over integration/cfg.py."""
    start_step = check_cfg_start_step(start_step)
    runner = _runner(model)
    if runner is None:
        return add_run_spec(model, id_percents, id_start_step, start_step)
    return _set_runner(model, Runner((*runner.specs[:-1], dataclasses.replace(runner.specs[-1], cfg_start=start_step))))


def pack(x, g):
    """Official prepare() packing (sampling.py:32-63), patch size taken from the golden's shapes."""
    _, patch = T.golden_latent_packing(g)
    return rearrange(x, "b c (h ph) (w pw) -> b (h w) (c ph pw)", ph=patch, pw=patch)


def _call_log_probe(log: list):
    def wrapper(executor, *args, **kwargs):
        to = args[7]
        log.append(("call", float(args[1].max()), list(to["cond_or_uncond"]), args[4].tolist()))
        return executor(*args, **kwargs)

    return wrapper


def _first_hook_probe(model, monkeypatch, log: list):
    """Log double block 0's output and what the first ID cross-attention gets (its image rows and which table
    entries they read: entry 0 = the ID, entry 1 = the uncond ID), to place each ID on its chunk's rows."""
    block = model.model.diffusion_model.double_blocks[0]
    hook = block.register_forward_hook(lambda m, a, out: log.append(("block0", out[0].clone())))
    for table in (fold.FoldedID, fold.ReferenceID):
        residual = table.residual

        def logged(self, ca_index, img, select, *args, _residual=residual, **kwargs):
            if ca_index == 0:
                log.append(("ca0", img.clone(), None if select is None else select.tolist()))
            return _residual(self, ca_index, img, select, *args, **kwargs)

        monkeypatch.setattr(table, "residual", logged)
    return hook


def _reconstruct_call_log(log) -> list[dict]:
    """One entry per (model call, chunk), positive first: which ID the first CA attended to on that chunk's rows."""
    calls = []
    for entry in log:
        if entry[0] == "call":
            calls.append({"t": entry[1], "chunks": entry[2], "guidance": entry[3][0], "ids": {}})
        elif entry[0] == "block0":
            calls[-1]["block0"] = entry[1]
        elif entry[0] == "ca0":
            img, select = entry[1], entry[2]
            full = calls[-1]["block0"]
            batch = full.shape[0] // len(calls[-1]["chunks"])
            starts = [r for r in range(0, full.shape[0] - img.shape[0] + 1)
                      if torch.equal(full[r:r + img.shape[0], :img.shape[1]], img)]
            assert len(starts) == 1 and starts[0] % batch == 0 and img.shape[0] % batch == 0, starts
            for row in range(starts[0], starts[0] + img.shape[0], batch):
                entry_index = 0 if select is None else select[row - starts[0]]
                calls[-1]["ids"][calls[-1]["chunks"][row // batch]] = ("id", "uncond_id")[entry_index]
    out = []
    for c in calls:
        for chunk in sorted(c["chunks"]):
            out.append({"t": c["t"], "txt": "pos" if chunk == 0 else "neg", "id": c["ids"].get(chunk, "None"),
                        "guidance": c["guidance"]})
    return out


@pytest.fixture(scope="module")
def denoise_setup():
    from conftest import Golden

    flux_golden = Golden("flux_patched")
    g = Golden("flux_denoise")
    assert g.meta["weights_file_shared_with"].removesuffix(".weights.safetensors") == flux_golden.name
    base = T.golden_flux_patcher(flux_golden)
    pm = T.golden_pulid_model(flux_golden)
    return g, flux_golden, base, pm, T.pulid_patcher(pm)


def _sample(g, flux_golden, base, model, case):
    import comfy.samplers

    io = g.io
    guidance = case["guidance"]
    positive = [[io["in.txt"], {"pooled_output": io["in.vec"], "guidance": guidance}]]
    negative = positive
    if "neg_txt" in case:
        negative = [[io["in.neg_txt"], {"pooled_output": io["in.neg_vec"], "guidance": guidance}]]
    guider = comfy.samplers.CFGGuider(model)  # ComfyUI's own guider, unmodified
    guider.set_cfg(case["true_cfg"])
    guider.set_conds(positive, negative)
    sigmas = io["in.timesteps"].float()
    out = guider.sample(io["in.noise_unpacked"], torch.zeros_like(io["in.noise_unpacked"]),
                        comfy.samplers.sampler_object("euler"), sigmas, disable_pbar=True, seed=0)
    return pack(base.model.latent_format.process_in(out), flux_golden)


@torch.no_grad()
@pytest.mark.parametrize("folded", [True, False], ids=["folded", "reference"])
def test_official_denoise_loop_through_cfgguider(denoise_setup, monkeypatch, folded):
    import comfy.patcher_extension as pe

    g, flux_golden, base, pm, pp = denoise_setup
    io = g.io
    assert torch.equal(pack(io["in.noise_unpacked"], flux_golden), io["in.img"])
    sigmas = io["in.timesteps"].float()
    assert torch.allclose(sigmas.double(), torch.tensor(g.meta["timesteps"], dtype=torch.float64))
    assert len(sigmas) == g.meta["num_steps"] + 1
    log: list = []
    hook = _first_hook_probe(base, monkeypatch, log)
    try:
        for name, case in g.meta["cases"].items():
            model = base
            if case["id"] is not None:
                emb = IDEmbedding(tokens=io["in.id"], uncond=io["in.uncond_id"] if "uncond_id" in case else None)
                model = apply_pulid_flux(base, pp, emb, weight=case["id_weight"], start_step=case["start_step"],
                                         uncond_mode="uncond_id" if emb.uncond is not None else "none",
                                         folded=folded)
                assert model is not base
                set_cfg_start(model, case.get("timestep_to_start_cfg", 1))  # what the Apply node does
            model = model.clone()
            log.clear()
            model.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "test_probe", _call_log_probe(log))
            got = _sample(g, flux_golden, base, model, case)
            torch.testing.assert_close(got, io[f"out.{name}"], atol=ATOL, rtol=RTOL,
                                       msg=lambda m, n=name: f"{n}: {m}")
            calls = _reconstruct_call_log(log)
            expected = g.meta["call_log"][name]
            assert len(calls) == len(expected), (name, calls)
            for got_call, exp in zip(calls, expected):
                assert math.isclose(got_call["t"], exp["t"], rel_tol=1e-6), (name, got_call, exp)
                assert (got_call["txt"], got_call["id"]) == (exp["txt"], exp["id"]), (name, got_call, exp)
                assert math.isclose(got_call["guidance"], exp["guidance"]), (name, got_call, exp)
                assert exp["id"] == "None" or math.isclose(exp["id_weight"], case["id_weight"]), (name, exp)
            # the number of model rows per step: the negative pass is skipped, not computed and thrown away
            steps = g.meta["timesteps"][:-1]
            chunks = [sum(len(e[2]) for e in log if e[0] == "call" and math.isclose(e[1], t, rel_tol=1e-6))
                      for t in steps]
            per_step = [sum(1 for c in expected if math.isclose(c["t"], t, rel_tol=1e-6)) for t in steps]
            assert chunks == per_step, (name, chunks, per_step)
    finally:
        hook.remove()


@torch.no_grad()
def test_cfg_start_zero_runs_comfyui_cfg_on_every_step(denoise_setup):
    """cfg_start_step 0: the negative pass runs from step 0 (ComfyUI's own CFG), so step 0 differs from official."""
    import comfy.patcher_extension as pe

    g, flux_golden, base, pm, pp = denoise_setup
    io, case = g.io, g.meta["cases"]["true_cfg"]
    emb = IDEmbedding(tokens=io["in.id"], uncond=io["in.uncond_id"])
    model = apply_pulid_flux(base, pp, emb, weight=case["id_weight"], start_step=case["start_step"])
    set_cfg_start(model, case["timestep_to_start_cfg"])
    assert [s.cfg_start for s in model.get_wrappers(WrappersMP.CALC_COND_BATCH, CFG_WRAPPER_KEY)[0].specs] == [1]
    set_cfg_start(model, 0)
    assert [s.cfg_start for s in model.get_wrappers(WrappersMP.CALC_COND_BATCH, CFG_WRAPPER_KEY)[0].specs] == [0]
    log: list = []
    model = model.clone()
    model.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "test_probe", _call_log_probe(log))
    got = _sample(g, flux_golden, base, model, case)
    steps = g.meta["timesteps"][:-1]
    chunks = [sorted(c for e in log if math.isclose(e[1], t, rel_tol=1e-6) for c in e[2]) for t in steps]
    assert chunks == [[0, 1]] * g.meta["num_steps"]  # positive and negative on every step
    assert (got - io["out.true_cfg"]).abs().max() > 100 * ATOL


def test_set_cfg_start_leaves_the_input_model_alone(denoise_setup):
    _, _, base, _, _ = denoise_setup
    before = {k: {kk: list(vv) for kk, vv in v.items()} for k, v in base.wrappers.items()}
    m = base.clone()
    set_cfg_start(m, 3)
    set_cfg_start(m, 2)  # replaces, never stacks
    [runner] = m.get_wrappers(WrappersMP.CALC_COND_BATCH, CFG_WRAPPER_KEY)
    assert [s.cfg_start for s in runner.specs] == [2]
    assert {k: {kk: list(vv) for kk, vv in v.items()} for k, v in base.wrappers.items()} == before
    for bad in (-1, 1.5, True, "1"):
        with pytest.raises(ValueError, match="cfg_start_step"):
            set_cfg_start(m, bad)
