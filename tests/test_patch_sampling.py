"""The Flux patch inside real ComfyUI sampling (comfy.sample / comfy.samplers, tiny Flux on CPU):
invariants (nothing leaks, nothing is mutated), timing, chaining, CFG rows, batches, memory, dtypes."""

from __future__ import annotations

import pytest
import torch
from conftest import COMFYUI_ROOT, NO_COMFYUI, setup_comfyui

if COMFYUI_ROOT is None:
    pytest.skip(NO_COMFYUI, allow_module_level=True)
setup_comfyui()

import _tiny_flux as T  # noqa: E402

from comfyui_pulid_flux.integration import patch as P  # noqa: E402
from comfyui_pulid_flux.integration.patch import apply_pulid_flux  # noqa: E402


def model_sampling_flux(model, shift: float):
    """Core's own ModelSamplingFlux node; max_shift == base_shift gives exactly `shift` at any size."""
    from comfy_extras.nodes_model_advanced import ModelSamplingFlux

    return ModelSamplingFlux().patch(model, max_shift=shift, base_shift=shift, width=1024, height=1024)[0]


@pytest.fixture()
def setup(monkeypatch):
    base = T.tiny_flux_patcher()
    pm = T.tiny_pulid_model()
    log = T.instrument_tables(monkeypatch)
    return base, pm, T.pulid_patcher(pm), log


def attends(log) -> list:
    return [e for e in log if e[0] == "attend"]


def test_weight_zero_is_the_model_itself(setup):
    base, _, pp, _ = setup
    assert apply_pulid_flux(base, pp, T.tiny_embedding(), weight=0.0) is base
    # a weight-0 apply is a bypass, as the node's: the other inputs are not even looked at
    assert apply_pulid_flux(base, pp, T.tiny_embedding(id_dim=48), weight=0) is base
    assert apply_pulid_flux(base, None, None, weight=-0.0, start_percent=2.0) is base
    with pytest.raises(ValueError, match=r"weight=nan must be a finite number"):
        apply_pulid_flux(base, pp, T.tiny_embedding(), weight=float("nan"))


def test_outside_the_window_is_bit_identical_and_free(setup):
    base, _, pp, log = setup
    emb = T.tiny_embedding()
    ref = T.sample(base, steps=3, cfg=2.0)
    for kwargs in (dict(start_step=3), dict(start_percent=0.999, end_percent=0.999)):
        log.clear()
        out = T.sample(apply_pulid_flux(base, pp, emb, **kwargs), steps=3, cfg=2.0)
        assert torch.equal(out, ref), kwargs
        assert attends(log) == [], kwargs  # rows without ID cost nothing
    log.clear()
    assert not torch.equal(T.sample(apply_pulid_flux(base, pp, emb), steps=3, cfg=2.0), ref)
    assert attends(log)


def test_upstream_and_diffusion_model_untouched(setup):
    base, _, pp, _ = setup
    dm = base.model.diffusion_model
    forward_orig = type(dm).forward_orig
    before = (T.structure(base.model_options), T.structure(base.wrappers), T.structure(base.callbacks),
              T.structure(base.additional_models))
    fresh = T.sample(base, cfg=2.0)
    attrs = T.module_attrs(dm)  # after ComfyUI's own first load (it marks loaded modules)
    m = apply_pulid_flux(base, pp, T.tiny_embedding(), mask=torch.ones(1, 32, 32))
    m2 = apply_pulid_flux(m, pp, T.tiny_embedding(seed=5), weight=0.5)
    T.sample(m2, cfg=2.0)
    after = (T.structure(base.model_options), T.structure(base.wrappers), T.structure(base.callbacks),
             T.structure(base.additional_models))
    assert after == before
    assert T.module_attrs(dm) == attrs  # no attribute set on the diffusion model or any submodule
    assert "forward_orig" not in dm.__dict__ and type(dm).forward_orig is forward_orig
    for model in (m, m2):  # no call state outlives its call
        assert all(getattr(P._local, p.applied.key, None) is None
                   for p in model.model_options["transformer_options"]["patches_replace"]["dit"].values())
    # a graph without PuLID sampled after one with PuLID is bit-identical to a fresh one
    assert torch.equal(T.sample(base, cfg=2.0), fresh)
    assert torch.equal(T.sample(base.clone(), cfg=2.0), fresh)


def test_exception_mid_sampling_leaves_nothing_behind(setup):
    import comfy.patcher_extension as pe

    base, _, pp, _ = setup
    fresh = T.sample(base, cfg=2.0)
    m = apply_pulid_flux(base, pp, T.tiny_embedding())
    good = T.sample(m, cfg=2.0)
    snapshot = (T.structure(base.model_options), T.structure(m.model_options), T.structure(m.wrappers))
    attrs = T.module_attrs(base.model.diffusion_model)
    calls = []

    def boom(executor, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom at step 2")
        return executor(*args, **kwargs)

    failing = m.clone()
    failing.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "test_boom", boom)
    with pytest.raises(RuntimeError, match="boom at step 2"):
        T.sample(failing, cfg=2.0)
    assert (T.structure(base.model_options), T.structure(m.model_options), T.structure(m.wrappers)) == snapshot
    assert T.module_attrs(base.model.diffusion_model) == attrs
    assert torch.equal(T.sample(base, cfg=2.0), fresh)
    assert torch.equal(T.sample(m, cfg=2.0), good)


def test_stacked_applies_and_foreign_patches_all_run(setup):
    base, pm, pp, log = setup
    foreign = []

    def foreign_patch(tag):
        def patch(args, extra):  # core-style function patch (as SkipLayerGuidanceDiT registers)
            foreign.append(tag)
            return extra["original_block"](args)
        return patch

    pre = base.clone()
    pre.set_model_patch_replace(foreign_patch("before"), "dit", "double_block", 0)
    one = apply_pulid_flux(pre, pp, T.tiny_embedding(seed=2))
    two = apply_pulid_flux(one, pp, T.tiny_embedding(seed=3), weight=0.7)
    post = two.clone()
    inner = post.model_options["transformer_options"]["patches_replace"]["dit"][("double_block", 0)]

    def wrapping(args, extra):  # another pack that chains like we do
        foreign.append("after")
        return inner(args, extra)

    post.set_model_patch_replace(wrapping, "dit", "double_block", 0)
    log.clear()
    out = T.sample(post, steps=2, cfg=1.0)
    assert foreign == ["after", "before"] * 2
    tables = {id(e[6]) for e in attends(log) if e[1] == 0}
    assert len(tables) == 2  # both identities attended at double block 0, every step
    assert len([e for e in attends(log) if e[1] == 0]) == 4
    assert not torch.equal(out, T.sample(one, steps=2, cfg=1.0))


@pytest.mark.parametrize("double_layers", ["1", "0, 1, 2"])  # "0, 1, 2": every double block, all our CAs in them
def test_core_skip_layer_guidance_after_pulid_runs(setup, double_layers):
    from comfy_extras.nodes_slg import SkipLayerGuidanceDiT

    base, _, pp, log = setup
    m = apply_pulid_flux(base, pp, T.tiny_embedding())
    res = SkipLayerGuidanceDiT.execute(m, 3.0, 0.0, 1.0, double_layers, "1")
    slg = getattr(res, "result", None) or res.args
    log.clear()
    out = T.sample(slg[0], steps=2, cfg=2.0)
    assert torch.isfinite(out).all() and attends(log)
    assert not torch.equal(out, T.sample(m, steps=2, cfg=2.0))


def test_model_sampling_flux_after_the_node_gates_on_the_shifted_schedule(setup):
    import comfy.patcher_extension as pe

    base, pm, pp, log = setup
    end = 0.5
    m = apply_pulid_flux(base, pp, T.tiny_embedding(), end_percent=end)
    shifted = model_sampling_flux(m, shift=3.0)
    sigmas_seen = []
    shifted.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "probe",
                                 lambda ex, *a, **k: (sigmas_seen.append(float(a[1].max())), ex(*a, **k))[1])
    log.clear()
    steps = 8
    T.sample(shifted, steps=steps, cfg=1.0)
    active = len([e for e in attends(log) if e[1] == 0])
    threshold_now = shifted.get_model_object("model_sampling").percent_to_sigma(end)
    threshold_then = base.get_model_object("model_sampling").percent_to_sigma(end)
    expected = sum(1 for s in sigmas_seen if s >= threshold_now)
    stale = sum(1 for s in sigmas_seen if s >= threshold_then)
    assert expected != stale  # the test distinguishes apply-time from sampling-time conversion
    assert active == expected


def test_true_cfg_rows_and_id_work_once_per_identity(setup):
    base, pm, pp, log = setup
    n_ca = pm.num_ca
    steps = 3
    for seed, (mode, rows, selects) in enumerate((("uncond_id", 2, True), ("none", 1, False), ("same", 2, False))):
        emb = T.tiny_embedding(seed=20 + seed)  # a new identity: folded once, at apply
        log.clear()
        # same text length for both prompts, so ComfyUI batches cond and uncond rows in one call
        m = apply_pulid_flux(base, pp, emb, uncond_mode=mode)
        folds = [e for e in log if e[0] == "fold"]
        assert len(folds) == n_ca * (2 if mode == "uncond_id" else 1), mode  # at apply: before the first call
        T.sample(m, steps=steps, cfg=2.0, negative=T.tiny_cond(1, tokens=7))
        att = attends(log)
        assert len(att) == steps * n_ca and {e[2] for e in att} == {rows}, mode  # one ID term per CA and call
        assert all((e[3] is not None) == selects for e in att), mode  # per-row entries only with 2 IDs
        if selects:
            assert sorted(att[0][3].tolist()) == [0, 1], mode  # one row gets the cond, one the uncond ID
        assert [e for e in log if e[0] == "fold"] == folds, mode  # nothing folded while sampling
        # re-queuing with another weight or timing reuses the folded identity (and its ModelPatcher)
        again = apply_pulid_flux(base, pp, emb, uncond_mode=mode, weight=0.3, start_step=1)
        assert [e for e in log if e[0] == "fold"] == folds, mode
        assert again.model_patches_models() == m.model_patches_models()
    log.clear()  # fake CFG (cfg 1): ComfyUI runs only the positive rows
    T.sample(apply_pulid_flux(base, pp, emb), steps=steps, cfg=1.0)
    assert [e[2] for e in attends(log)] == [1] * steps * n_ca


def test_id_batch_per_item_and_broadcast(setup):
    base, _, pp, _ = setup
    a, b = T.tiny_embedding(seed=2), T.tiny_embedding(seed=3)
    both = type(a)(tokens=torch.cat([a.tokens, b.tokens]), uncond=a.uncond)
    twice_a = type(a)(tokens=torch.cat([a.tokens, a.tokens]), uncond=a.uncond)
    out_ab = T.sample(apply_pulid_flux(base, pp, both), batch=2, cfg=2.0)
    out_aa = T.sample(apply_pulid_flux(base, pp, twice_a), batch=2, cfg=2.0)
    out_a = T.sample(apply_pulid_flux(base, pp, a), batch=2, cfg=2.0)
    # N=1 broadcasts like N=B of copies (one table entry for every row vs one per row: float rounding only)
    torch.testing.assert_close(out_ab[0], out_aa[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(out_aa, out_a, atol=1e-5, rtol=0)
    assert (out_ab[1] - out_aa[1]).abs().max() > 1e-3
    three = type(a)(tokens=torch.cat([a.tokens] * 3), uncond=a.uncond)
    with pytest.raises(ValueError, match=r"3 identities but the latent batch is 2"):
        T.sample(apply_pulid_flux(base, pp, three), batch=2)


def test_bad_mask_batch_fails_at_sampling_and_leaves_the_model_clean(setup):
    base, _, pp, _ = setup
    fresh = T.sample(base, batch=2)
    m = apply_pulid_flux(base, pp, T.tiny_embedding(), mask=torch.ones(3, 32, 32))
    with pytest.raises(ValueError, match=r"mask batch 3 matches neither 1 nor the latent batch 2"):
        T.sample(m, batch=2)
    assert getattr(P._local, m.model_options["transformer_options"]["patches_replace"]["dit"][("double_block", 0)]
                   .applied.key, None) is None
    assert torch.equal(T.sample(base, batch=2), fresh)
    ok = T.sample(apply_pulid_flux(base, pp, T.tiny_embedding(), mask=torch.ones(2, 48, 40)), batch=2)
    assert torch.isfinite(ok).all()


def test_mask_weights_are_computed_once_per_run(setup, monkeypatch):
    import comfyui_pulid_flux.integration.patch as patch_module

    base, _, pp, _ = setup
    calls = []
    real = patch_module.token_weights
    monkeypatch.setattr(patch_module, "token_weights", lambda *a, **k: (calls.append(a[2:]), real(*a, **k))[1])
    m = apply_pulid_flux(base, pp, T.tiny_embedding(), mask=torch.ones(1, 40, 56))
    T.sample(m, steps=3, cfg=2.0, size=(40, 56))  # latent 5x7: odd on both sides
    assert len(calls) == 1 and calls[0][2] == (5, 7, 2)  # not per step / block; told the latent size


def test_downstream_clone_copies_no_pulid_weights(setup):
    from comfyui_pulid_flux.pulid.fold import FoldedID

    base, pm, pp, _ = setup
    emb = T.tiny_embedding()
    m = apply_pulid_flux(base, pp, emb)
    assert T.bytes_copied_by_clone(m) == 0
    c = m.clone()
    dit = m.model_options["transformer_options"]["patches_replace"]["dit"]
    assert all(c.model_options["transformer_options"]["patches_replace"]["dit"][k] is v for k, v in dit.items())
    handed = {id(x): x for x in m.model_patches_models()}
    assert len(handed) == 1
    (table_patcher,) = handed.values()
    assert isinstance(table_patcher.model, FoldedID)  # the folded tables only: no CA, never the IDFormer
    pulid_params = {p.data_ptr() for p in pm.parameters()}
    assert not pulid_params & {p.data_ptr() for p in table_patcher.model.parameters()}
    assert apply_pulid_flux(base, pp, emb).model_patches_models()[0] is table_patcher  # cached per identity
    assert apply_pulid_flux(base, pp, T.tiny_embedding(seed=9)).model_patches_models()[0] is not table_patcher


@pytest.mark.parametrize("weight_dtype,compute", [(torch.bfloat16, None), (torch.float16, None),
                                                  (torch.float8_e4m3fn, torch.bfloat16)])
def test_dtypes_follow_the_diffusion_model(setup, weight_dtype, compute):
    _, _, pp, log = setup
    base = T.tiny_flux_patcher(weight_dtype=weight_dtype, manual_cast_dtype=compute)
    log.clear()
    ref = T.sample(base, steps=2, cfg=2.0)
    out = T.sample(apply_pulid_flux(base, pp, T.tiny_embedding()), steps=2, cfg=2.0)
    assert torch.isfinite(out).all() and not torch.equal(out, ref)
    assert {e[5].dtype for e in attends(log)} == {torch.float32}  # fp32 tables compute in fp32, cast back


def test_kontext_reference_latents_run_and_only_main_tokens_get_the_id(setup):
    base, _, pp, log = setup
    m = apply_pulid_flux(base, pp, T.tiny_embedding())
    x = torch.randn(1, 16, 6, 4)  # 3x2 = 6 main-image tokens
    ref = torch.randn(1, 16, 4, 4)  # 4 Kontext reference tokens appended after them
    cond = T.tiny_cond(0)[0]
    args = (x, torch.tensor([0.7]), cond[0], cond[1]["pooled_output"], torch.tensor([3.5]))
    log.clear()
    out = T.comfy_forward(m, *args, ref_latents=[ref])
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert {e[4] for e in attends(log)} == {6}
    assert not torch.equal(out, T.comfy_forward(base, *args, ref_latents=[ref]))


def sigmas_with_id(model, log, run) -> tuple[list[float], list[float]]:
    """(sigmas of all model calls, sigmas of the calls whose first CA added the ID) while run(probed) samples."""
    import comfy.patcher_extension as pe

    probed = model.clone()
    probed.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "probe",
                                lambda ex, *a, **k: (log.append(("call", float(a[1].max()))), ex(*a, **k))[1])
    log.clear()
    run(probed)
    calls, with_id = [], []
    for e in log:
        if e[0] == "call":
            calls.append(e[1])
        elif e[0] == "attend" and e[1] == 0:
            with_id.append(calls[-1])
    return calls, with_id


def test_custom_schedule_above_sigma_one_gets_the_id_from_step_0(setup):
    import comfy.sample
    import comfy.samplers

    base, _, pp, log = setup
    m = apply_pulid_flux(base, pp, T.tiny_embedding())  # start_percent 0: no upper bound on sigma
    latent = torch.zeros(1, 16, 4, 4)
    sigmas = torch.tensor([1.6, 1.1, 0.5, 0.0])
    assert base.get_model_object("model_sampling").percent_to_sigma(0.0) < sigmas[0]

    def run(model):
        comfy.sample.sample_custom(model, comfy.sample.prepare_noise(latent, 0), 1.0,
                                   comfy.samplers.sampler_object("euler"), sigmas, T.tiny_cond(0), T.tiny_cond(1),
                                   latent, disable_pbar=True, seed=0)

    calls, with_id = sigmas_with_id(m, log, run)
    assert calls == pytest.approx(sigmas[:-1].tolist()) and with_id == calls


def test_split_sampling_counts_start_step_per_sampler_and_percents_on_the_noise_scale(setup):
    """Two samplers (KSamplerAdvanced-style start/last step) or denoise < 1: start_step counts from the first
    step of each sampler run; start/end_percent are noise levels, the same whatever the split."""
    import comfy.sample

    base, _, pp, log = setup
    steps = 6
    latent = torch.zeros(1, 16, 4, 4)
    noise = comfy.sample.prepare_noise(latent, 0)

    def ksampler(first=None, last=None, denoise=1.0):
        def run(model):
            comfy.sample.sample(model, noise, steps, 1.0, "euler", "simple", T.tiny_cond(0), T.tiny_cond(1), latent,
                                denoise=denoise, start_step=first, last_step=last, disable_pbar=True, seed=0)
        return run

    by_step = apply_pulid_flux(base, pp, T.tiny_embedding(), start_step=2)
    calls, whole = sigmas_with_id(by_step, log, ksampler())
    assert whole == calls[2:]
    first_calls, first = sigmas_with_id(by_step, log, ksampler(0, 3))
    second_calls, second = sigmas_with_id(by_step, log, ksampler(3, steps))
    assert first_calls + second_calls == pytest.approx(calls)  # the same steps, split in two runs
    assert first == first_calls[2:] and second == second_calls[2:]  # each sampler starts counting at 0
    low_calls, low = sigmas_with_id(by_step, log, ksampler(denoise=0.5))
    assert len(low_calls) == steps and low == low_calls[2:]  # denoise < 1: counted within that run too

    by_percent = apply_pulid_flux(base, pp, T.tiny_embedding(), start_percent=0.2, end_percent=0.6)
    _, whole = sigmas_with_id(by_percent, log, ksampler())
    _, first = sigmas_with_id(by_percent, log, ksampler(0, 3))
    _, second = sigmas_with_id(by_percent, log, ksampler(3, steps))
    assert 0 < len(whole) < steps and first + second == pytest.approx(whole)  # the same noise levels
