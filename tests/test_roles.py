"""Roles by construction (pulid/plan.py, integration/cfg.py) with core's real guiders, chained Applies and threads.

For every core guider: it samples, each row of every model call gets the ID its conditioning's role asks for
(uncond ID exactly on the negative / PerpNeg's empty / SAG's negative pass), the CFG start drops exactly the
negative pass where the guider's formula reduces, weight 0 and an inactive window are bit-identical to no
PuLID, and the plain graph afterwards equals a fresh one (tests/_compat.py check_combination).
"""

from __future__ import annotations

import threading

import pytest
import torch
from conftest import COMFYUI_ROOT, NO_COMFYUI, setup_comfyui

if COMFYUI_ROOT is None:
    pytest.skip(NO_COMFYUI, allow_module_level=True)
setup_comfyui()

import _calls as L  # noqa: E402
import _compat as C  # noqa: E402
import _tiny_flux as T  # noqa: E402

from comfyui_pulid_flux.nodes.apply import Apply  # noqa: E402

base, kit = C.base, C.kit
STEPS = 3
ALL3 = ["middle", "negative", "positive"]
# rows evaluated at step 0 (before the Apply node's default CFG start, step 1) and at the later steps
GUIDERS = {
    "ksampler": (["positive"], ["negative", "positive"]),
    "cfg_guider": (["positive"], ["negative", "positive"]),
    "cfg_1": (["positive"], ["positive"]),
    "basic": (["positive"], ["positive"]),
    "dual_regular": (["middle", "positive"], ALL3),
    "dual_nested": (ALL3, ALL3),  # no reduction of the nested formula: unchanged
    "perpneg_guider": (["empty", "negative", "positive"],) * 2,  # no reduction: unchanged
    "perpneg_node": (["empty", "positive"], ["empty", "negative", "positive"]),
    "sag_pass": (["negative", "positive"], ["negative", "negative", "positive"]),
}


def _sag_like(args):
    """SAG's extra pass exactly as comfy_extras/nodes_sag.py makes it (SAG itself needs a UNet middle block)."""
    import comfy.samplers

    (sag,) = comfy.samplers.calc_cond_batch(args["model"], [args["uncond"]], args["input"], args["sigma"],
                                            args["model_options"])
    return args["denoised"] + 0.0 * sag


def guide(kind: str, model, steps: int = STEPS, sampler: str = "euler", callback=None):
    """Sample `model` with the core guider `kind` (built by its node) and the conditionings of tests/_calls.py."""
    import comfy.sample
    import comfy.samplers
    import comfy_extras.nodes_custom_sampler as N
    import comfy_extras.nodes_perpneg as P

    c = L.CONDS
    lat, noise = L.latent()
    if kind == "ksampler":
        return comfy.sample.sample(model, noise, steps, 2.0, sampler, "simple", c["positive"], c["negative"], lat,
                                   disable_pbar=True, seed=0, callback=callback)
    if kind == "perpneg_node":
        model = C.run_node(P.PerpNeg, model=model, empty_conditioning=c["empty"], neg_scale=1.0)[0]
    if kind == "sag_pass":
        model = model.clone()
        model.set_model_sampler_post_cfg_function(_sag_like, disable_cfg1_optimization=True)
    if kind in ("cfg_guider", "cfg_1", "perpneg_node", "sag_pass"):
        cfg = 1.0 if kind == "cfg_1" else 2.0
        guider = C.run_node(N.CFGGuider, model=model, positive=c["positive"], negative=c["negative"], cfg=cfg)[0]
    elif kind == "basic":
        guider = C.run_node(N.BasicGuider, model=model, conditioning=c["positive"])[0]
    elif kind.startswith("dual"):
        guider = C.run_node(N.DualCFGGuider, model=model, cond1=c["positive"], cond2=c["middle"],
                            negative=c["negative"], cfg_conds=2.0, cfg_cond2_negative=1.5,
                            style=kind.removeprefix("dual_"))[0]
    else:
        guider = C.run_node(P.PerpNegGuider, model=model, positive=c["positive"], negative=c["negative"],
                            empty_conditioning=c["empty"], cfg=2.0, neg_scale=1.0)[0]
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", steps)
    return guider.sample(noise, lat, comfy.samplers.sampler_object(sampler), sigmas, disable_pbar=True, seed=0,
                         callback=callback)


def check_log(log: list, expected: tuple, entries=L.expected_entry):
    assert log, "no model call was logged"
    per_step = L.rows_per_step(log)
    assert sorted(per_step) == list(range(STEPS))
    for step, rows in per_step.items():
        assert rows == expected[min(step, 1)], (step, rows)
    for call in log:
        for key, got in call["ids"].items():
            assert got == [entries(n) for n in call["rows"]], (key, call)


@pytest.mark.parametrize("kind", list(GUIDERS))
def test_every_core_guider_gives_each_role_its_id(base, kit, kind):
    graph = lambda pulid, log=None: guide(kind, L.probed(pulid(base), log) if log is not None else  # noqa: E731
                                          (pulid(base) if pulid else base))
    C.check_combination(graph, kit)
    log: list = []
    graph(C.pulid_step(kit), log)
    check_log(log, GUIDERS[kind])


@pytest.mark.parametrize("mode", ["same", "none"])
def test_uncond_modes_follow_the_roles(base, kit, mode):
    log: list = []
    guide("dual_regular", L.probed(C.apply_id(base, kit, uncond_mode=mode), log))
    check_log(log, GUIDERS["dual_regular"], lambda name: L.expected_entry(name, mode))


# --------------------------------------------------------------------------------------- chained Applies
def _two(model, kit, first: dict, second: dict, order: str):
    a, b = (first, second) if order == "ab" else (second, first)
    ida, idb = (kit.identity, T.tiny_embedding(seed=7)) if order == "ab" else (T.tiny_embedding(seed=7), kit.identity)
    args = dict(weight=1.0, start_percent=0.0, end_percent=1.0, start_step=0, uncond_mode="uncond_id")
    m = C.run_node(Apply, model=model, pulid=kit.pulid, identity=ida, **{**args, **a})[0]
    return C.run_node(Apply, model=m, pulid=kit.pulid, identity=idb, **{**args, **b})[0]


@pytest.mark.parametrize("order", ["ab", "ba"])
def test_chained_applies_keep_their_own_settings_and_one_cfg_start(base, kit, order):
    left = torch.zeros(1, 32, 32)
    left[..., :16] = 1.0
    a = dict(cfg_start_step=2, attn_mask=left)
    b = dict(cfg_start_step=1, start_step=1, weight=0.5)
    log: list = []
    m = _two(base, kit, a, b, order)
    out = guide("cfg_guider", L.probed(m, log))
    keys = L.apply_keys(m)
    key_a, key_b = keys if order == "ab" else keys[::-1]
    # the run's CFG start is the smallest among the acting Applies: b's step 1, whatever the order
    assert L.rows_per_step(log) == {0: ["positive"], 1: ["negative", "positive"], 2: ["negative", "positive"]}
    for call in log:
        want = [L.expected_entry(n) for n in call["rows"]]
        assert call["ids"][key_a] == want
        assert call["ids"][key_b] == (want if call["step"] >= 1 else [None] * len(want))  # b's own start step
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("order", ["ab", "ba"])
def test_an_inactive_or_weight_0_apply_in_a_chain_is_no_apply(base, kit, order):
    a = dict(cfg_start_step=2)
    alone = C.run_node(Apply, model=base, pulid=kit.pulid, identity=kit.identity if order == "ab" else
                       T.tiny_embedding(seed=7), weight=1.0, start_percent=0.0, end_percent=1.0, start_step=0,
                       uncond_mode="uncond_id", cfg_start_step=2)[0]
    ref = guide("cfg_guider", alone)
    for idle in (dict(cfg_start_step=0, **C.INACTIVE), dict(cfg_start_step=0, weight=0.0)):
        chained = _two(base, kit, a, idle, order) if order == "ab" else _two(base, kit, idle, a, order)
        assert torch.equal(guide("cfg_guider", chained), ref), idle


# --------------------------------------------------------------------------------------- threads
def _forward(model, cond_or_uncond, barrier=None):
    x = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(3))
    cond = L.CONDS[("positive", "negative")[cond_or_uncond[0]]][0]
    ctx, vec = cond[0], cond[1]["pooled_output"]
    m = model
    if barrier is not None:  # every call waits inside the diffusion model until both are in flight
        from comfy.patcher_extension import WrappersMP

        m = model.clone()
        m.add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, "test_barrier",
                               lambda ex, *a, **k: (barrier.wait(timeout=60), ex(*a, **k))[1])
    return T.comfy_forward(m, x, torch.tensor([0.8]), ctx, vec, torch.tensor([3.0]), cond_or_uncond=cond_or_uncond)


def test_concurrent_calls_on_clones_keep_their_own_plans(base, kit):
    m = C.apply_id(base, kit, attn_mask=torch.ones(1, 32, 32))
    clones = [m.clone(), m.clone()]
    sequential = [_forward(c, (i,)) for i, c in enumerate(clones)]  # 0: positive, cond ID; 1: negative, uncond ID
    assert not torch.equal(*sequential)
    barrier, results, errors = threading.Barrier(2), [None, None], []

    def worker(i):
        try:
            results[i] = _forward(clones[i], (i,), barrier)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert all(torch.equal(r, s) for r, s in zip(results, sequential))


@pytest.mark.skipif(C.comfy_version() < (0, 4), reason="core's multi-GPU work units arrived after 0.3.64")
def test_core_multigpu_work_units_run_each_cond_with_its_role(base, kit):
    """comfy.samplers._calc_cond_batch_multigpu with two CPU 'devices' and core's MultiGPUThreadPool: the
    positive and the negative run at once in two pool threads, each through a clone, as on two GPUs."""
    import comfy.multigpu
    from comfy.patcher_extension import WrappersMP

    m = C.apply_id(base, kit, cfg_start_step=0)
    ref_log: list = []
    ref = guide("cfg_guider", L.probed(m, ref_log))
    devices = [torch.device("cpu"), torch.device("cpu", 0)]
    assert devices[0] != devices[1]
    barrier = threading.Barrier(2)

    def multigpu(executor, model, conds, x, t, model_options, *args, **kwargs):
        pool = comfy.multigpu.MultiGPUThreadPool(devices)
        try:
            mo = {**model_options, "multigpu_clones": {d: model.current_patcher for d in devices},
                  "multigpu_thread_pool": pool}
            return executor(model, conds, x, t, mo, *args, **kwargs)
        finally:
            pool.shutdown()

    log: list = []
    gpu = L.probed(m, log)
    gpu.add_wrapper_with_key(WrappersMP.CALC_COND_BATCH, "test_multigpu", multigpu)  # inside PuLID's run wrapper
    gpu.add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, "test_barrier",
                             lambda ex, *a, **k: (barrier.wait(timeout=60), ex(*a, **k))[1])
    out = guide("cfg_guider", gpu)
    assert torch.equal(out, ref)
    key = lambda c: (c["step"], c["rows"])  # noqa: E731 - pool threads log in any order
    assert sorted(log, key=key) == sorted(ref_log, key=key)
    check_log(log, (["negative", "positive"],) * 2)


# --------------------------------------------------------------------------------------- devices
def test_a_table_on_another_device_is_cast_per_call_not_refused(base, kit, monkeypatch):
    """Under --novram (or a table moved back to the offload device mid-run) each CA's tensors are cast to the
    call's device with comfy.model_management.cast_to. On the CPU the table claims another device."""
    import comfy.model_management as mm

    from comfyui_pulid_flux.pulid import fold

    m = C.apply_id(base, kit)
    ref = guide("cfg_guider", m)
    table = next(iter(m.model_options["transformer_options"]["patches_replace"]["dit"].values())).applied.prepared.table
    ours = {p.untyped_storage().data_ptr() for p in table.parameters()}
    cast, real = [], mm.cast_to

    def spy(t, *args, **kwargs):
        if t.untyped_storage().data_ptr() in ours:
            cast.append(kwargs.get("device"))
        return real(t, *args, **kwargs)

    monkeypatch.setattr(mm, "cast_to", spy)
    monkeypatch.setattr(fold._IDTable, "weight_device", property(lambda self: torch.device("meta")))
    assert torch.equal(guide("cfg_guider", m), ref)
    assert cast and set(cast) == {torch.device("cpu")}


def test_host_reads_once_per_step_with_true_cfg(base, kit, monkeypatch):
    """PuLID reads the schedule once per run and the step's sigma once per step (no read per model call, none
    more for true CFG): counted as tensor -> Python conversions over a run, against the plain model."""
    reads = []
    for name in ("__float__", "item", "tolist"):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _r=real, **k: (reads.append(1), _r(self, *a, **k))[1])

    def count(model, kind):
        reads.clear()
        guide(kind, model, steps=4)
        return len(reads)

    for kind in ("cfg_guider", "dual_regular", "sag_pass", "ksampler"):
        plain = count(base, kind)
        assert count(C.apply_id(base, kit, cfg_start_step=2, start_step=1), kind) - plain <= 4 + 1, kind
