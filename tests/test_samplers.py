"""The step of every model call, for every sampler in comfy.samplers.KSampler.SAMPLERS (integration/cfg.py).

A call belongs to the step the sampler reports next in its per-step callback: the calls made before
`callback(i)` are step i (Heun's corrector at sigma[i+1] included). Per sampler, on tiny Flux with true CFG,
start_step 1 and cfg_start_step 2: every call's step is checked against the callbacks seen by an independent
callback, the ID goes exactly to the calls of steps >= 1 with each row's role, the negative pass exactly to
steps >= 2; weight 0 and an inactive window are bit-identical to no PuLID and the plain graph afterwards equals
a fresh one.
"""

from __future__ import annotations

import pytest
import torch
from conftest import COMFYUI_ROOT, NO_COMFYUI, setup_comfyui

if COMFYUI_ROOT is None:
    pytest.skip(NO_COMFYUI, allow_module_level=True)
setup_comfyui()

import _calls as L  # noqa: E402
import _compat as C  # noqa: E402
import comfy.samplers  # noqa: E402

base, kit = C.base, C.kit
STEPS, START, CFG_START = 3, 1, 2


def run(model, sampler: str, callback=None):
    import comfy.sample

    lat, noise = L.latent()
    return comfy.sample.sample(model, noise, STEPS, 2.0, sampler, "simple", L.CONDS["positive"], L.CONDS["negative"],
                               lat, disable_pbar=True, seed=0, callback=callback)


@pytest.mark.parametrize("sampler", comfy.samplers.KSampler.SAMPLERS)
def test_every_sampler_gates_each_call_by_its_step(base, kit, sampler):
    timing = dict(start_step=START, cfg_start_step=CFG_START)
    C.check_combination(lambda pulid: run(pulid(base) if pulid else base, sampler), kit, **timing)
    log, reported = [], []

    def callback(step, x0, x, total):  # what the sampler reports, and how many calls it had made by then
        reported.append((step, len(log)))

    out = run(L.probed(C.apply_id(base, kit, **timing), log), sampler, callback)
    assert torch.isfinite(out).all()
    assert reported, "the sampler reported no step"
    calls_before = [n for _, n in reported]
    for i, call in enumerate(log):
        done = [s for s, n in reported if n <= i]  # callbacks that came before this call
        assert call["step"] == (done[-1] + 1 if done else 0), (i, call["step"], reported)
        want_rows = ["negative", "positive"] if call["step"] >= CFG_START else ["positive"]
        assert sorted(r for c in log if c["step"] == call["step"] for r in c["rows"]) == sorted(
            want_rows * sum(1 for c in log if c["step"] == call["step"] and "positive" in c["rows"])), call
        (ids,) = call["ids"].values()
        assert ids == [L.expected_entry(n) if call["step"] >= START else None for n in call["rows"]], call
    assert calls_before == sorted(calls_before)
