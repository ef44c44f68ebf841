"""Golden parity of the Flux patch: the official PuLID-Flux forward and denoise loop, reproduced through
ComfyUI's own Flux (0.3.64 / 0.33) with `pulid.patch` hooked in via patches_replace.

Every constructor argument, weight, input, schedule and expected call comes from the golden sidecars.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import COMFYUI_ROOT, NO_COMFYUI, setup_comfyui

if COMFYUI_ROOT is None:
    pytest.skip(NO_COMFYUI, allow_module_level=True)
setup_comfyui()

import _tiny_flux as T  # noqa: E402
from einops import rearrange  # noqa: E402

from comfyui_pulid_flux.pulid.embedding import IDEmbedding  # noqa: E402
from comfyui_pulid_flux.pulid.patch import apply_pulid_flux  # noqa: E402

ATOL, RTOL = 1e-5, 1e-4  # spec §7: Flux in fp32


def pack(x, g):
    """Official prepare() packing (sampling.py:32-63), patch size taken from the golden's shapes."""
    _, patch = T.golden_latent_packing(g)
    return rearrange(x, "b c (h ph) (w pw) -> b (h w) (c ph pw)", ph=patch, pw=patch)


@pytest.fixture(scope="module")
def flux_golden():
    from conftest import Golden

    return Golden("flux_patched")


@pytest.fixture(scope="module")
def golden_models(flux_golden):
    base = T.golden_flux_patcher(flux_golden)
    pm = T.golden_pulid_model(flux_golden)
    return base, pm, T.pulid_patcher(pm)


@pytest.mark.parametrize("folded", [True, False], ids=["folded", "reference"])
@torch.no_grad()
def test_flux_patched_matches_official(flux_golden, golden_models, folded):
    g, (base, _, pp) = flux_golden, golden_models
    io = g.io

    def run(model):
        out = T.comfy_forward(model, io["in.noise_unpacked"], io["in.timesteps"], io["in.txt"], io["in.y"],
                              io["in.guidance"])
        return pack(out, g)

    # pack() reproduces the official prepare() packing of the golden inputs
    assert torch.equal(pack(io["in.noise_unpacked"], g), io["in.img"])
    unpatched = run(base)
    torch.testing.assert_close(unpatched, io["out.unpatched"], atol=ATOL, rtol=RTOL)
    cases = {
        "out.patched": (io["in.id"], float(io["in.id_weight"])),
        "out.patched_w0p7": (io["in.id"], float(io["in.id_weight_b"])),
        "out.patched_id_broadcast": (io["in.id"][:1], float(io["in.id_weight"])),
    }
    for name, (ids, weight) in cases.items():
        model = apply_pulid_flux(base, pp, IDEmbedding(tokens=ids), weight=weight, uncond_mode="none", folded=folded)
        out = run(model)
        torch.testing.assert_close(out, io[name], atol=ATOL, rtol=RTOL, msg=lambda m, n=name: f"{n}: {m}")
        assert (out - unpatched).abs().max() > 100 * ATOL  # the ID term is really there


@pytest.mark.parametrize("folded", [True, False], ids=["folded", "reference"])
@torch.no_grad()
def test_flux_hook_points_and_raw_ca_outputs_match_official(flux_golden, monkeypatch, folded):
    """Each CA sits after the official block (sidecar ca_index_to_hook_point) and sees the official image
    tokens there: its raw output (before id_weight) equals out.ca_raw.k of the official id_weight-1 call."""
    g, io = flux_golden, flux_golden.io
    base = T.golden_flux_patcher(g)
    pm = T.golden_pulid_model(g)
    log = T.instrument_tables(monkeypatch)
    model = apply_pulid_flux(base, T.pulid_patcher(pm), IDEmbedding(tokens=io["in.id"]),
                             weight=float(io["in.id_weight"]), uncond_mode="none", folded=folded)
    dit = model.model_options["transformer_options"]["patches_replace"]["dit"]
    kind = {"double_block": "double_blocks", "single_block": "single_blocks"}
    hooks = {str(p.ca_index): f"{kind[name]}[{block}]" for (name, block), p in dit.items()}
    assert hooks == g.meta["ca_index_to_hook_point"]
    log.clear()
    T.comfy_forward(model, io["in.noise_unpacked"], io["in.timesteps"], io["in.txt"], io["in.y"], io["in.guidance"])
    raw = {e[1]: e[5] for e in log if e[0] == "attend"}  # one forward: one ID term per CA
    ref = flux_golden.seq("out.ca_raw")
    assert sorted(raw) == list(range(len(ref))) == list(range(g.meta["pulid_ca_constructor"]["count"]))
    for k, expected in enumerate(ref):
        torch.testing.assert_close(raw[k], expected, atol=ATOL, rtol=RTOL, msg=lambda m, k=k: f"ca_raw.{k}: {m}")


# --------------------------------------------------------------------------------------- denoise loop
def _official_guider(model, cfg: float, start_cfg: int):
    """CFGGuider running true CFG only from step `timestep_to_start_cfg` on, like flux/sampling.py:120-149."""
    import comfy.samplers

    class OfficialTrueCFG(comfy.samplers.CFGGuider):
        def predict_noise(self, x, timestep, model_options={}, seed=None):  # noqa: B006 (ComfyUI's signature)
            schedule = model_options["transformer_options"]["sample_sigmas"].tolist()
            step = next(i for i, s in enumerate(schedule) if math.isclose(s, float(timestep.max()), rel_tol=1e-6))
            scale = self.cfg if step >= start_cfg else 1.0  # cfg 1 -> ComfyUI skips the negative pass
            return comfy.samplers.sampling_function(self.inner_model, x, timestep, self.conds.get("negative"),
                                                    self.conds.get("positive"), scale, model_options=model_options,
                                                    seed=seed)

    guider = OfficialTrueCFG(model)
    guider.set_cfg(cfg)
    return guider


def _call_log_probe(log: list):
    def wrapper(executor, *args, **kwargs):
        to = args[7]
        log.append(("call", float(args[1].max()), list(to["cond_or_uncond"]), args[4].tolist()))
        return executor(*args, **kwargs)

    return wrapper


def _first_block_probe(monkeypatch, log: list):
    """Log, for the first CA (after double block 0), which ID entry each latent row got (None: no ID), read
    from the plan the patch used: a row has the ID when its gate is non-zero and the eager row span holds it."""
    from comfyui_pulid_flux.pulid import patch

    real = patch._with_id

    def probed(applied, ca_index, x, single):
        out = real(applied, ca_index, x, single)
        if ca_index == 0:
            plan, n_cond = applied.call_slot.plan, applied.prepared.n_cond
            rows = []
            for r in range(x.shape[0]):
                inside = plan.id_span is not None and plan.id_span[0] <= r < plan.id_span[1]
                entry = 0 if plan.select is None else int(plan.select[r])
                has_id = inside and bool(plan.gate[r].abs().max() > 0)
                rows.append(None if not has_id else ("id" if entry < n_cond else "uncond_id"))
            log.append(("ca0", rows))
        return out

    monkeypatch.setattr(patch, "_with_id", probed)


def _reconstruct_call_log(log) -> list[dict]:
    """One entry per (model call, chunk), positive first: which ID the first CA gave that chunk's rows."""
    calls = []
    for entry in log:
        if entry[0] == "call":
            calls.append({"t": entry[1], "chunks": entry[2], "guidance": entry[3][0], "ids": {}})
        elif entry[0] == "ca0":
            rows = entry[1]
            batch = len(rows) // len(calls[-1]["chunks"])
            for k, chunk in enumerate(calls[-1]["chunks"]):
                names = set(rows[k * batch:(k + 1) * batch])
                assert len(names) == 1, rows  # one ID per chunk
                name = names.pop()
                if name is not None:
                    calls[-1]["ids"][chunk] = name
    out = []
    for c in calls:
        for chunk in sorted(c["chunks"]):
            out.append({"t": c["t"], "txt": "pos" if chunk == 0 else "neg", "id": c["ids"].get(chunk, "None"),
                        "guidance": c["guidance"]})
    return out


@torch.no_grad()
@pytest.mark.parametrize("folded", [True, False], ids=["folded", "reference"])
def test_flux_denoise_matches_official(flux_golden, monkeypatch, folded):
    import comfy.patcher_extension as pe
    import comfy.samplers
    from conftest import Golden

    g = Golden("flux_denoise")
    shared = g.meta["weights_file_shared_with"].removesuffix(".weights.safetensors")
    assert shared == flux_golden.name
    io = g.io
    base = T.golden_flux_patcher(flux_golden)
    pm = T.golden_pulid_model(flux_golden)
    pp = T.pulid_patcher(pm)
    assert torch.equal(pack(io["in.noise_unpacked"], flux_golden), io["in.img"])
    sigmas = io["in.timesteps"].float()
    assert torch.allclose(sigmas.double(), torch.tensor(g.meta["timesteps"], dtype=torch.float64))
    assert len(sigmas) == g.meta["num_steps"] + 1
    log: list = []
    _first_block_probe(monkeypatch, log)

    for name, case in g.meta["cases"].items():
        guidance = case["guidance"]
        positive = [[io["in.txt"], {"pooled_output": io["in.vec"], "guidance": guidance}]]
        negative = positive
        if "neg_txt" in case:
            negative = [[io["in.neg_txt"], {"pooled_output": io["in.neg_vec"], "guidance": guidance}]]
        model = base
        if case["id"] is not None:
            emb = IDEmbedding(tokens=io["in.id"], uncond=io["in.uncond_id"] if "uncond_id" in case else None)
            model = apply_pulid_flux(base, pp, emb, weight=case["id_weight"], start_step=case["start_step"],
                                     uncond_mode="uncond_id" if emb.uncond is not None else "none", folded=folded)
        model = model.clone()
        log.clear()
        model.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "test_probe", _call_log_probe(log))
        guider = _official_guider(model, case["true_cfg"], case.get("timestep_to_start_cfg", 1))
        guider.set_conds(positive, negative)
        out = guider.sample(io["in.noise_unpacked"], torch.zeros_like(io["in.noise_unpacked"]),
                            comfy.samplers.sampler_object("euler"), sigmas, disable_pbar=True, seed=0)
        got = pack(base.model.latent_format.process_in(out), flux_golden)
        torch.testing.assert_close(got, io[f"out.{name}"], atol=ATOL, rtol=RTOL, msg=lambda m, n=name: f"{n}: {m}")
        calls = _reconstruct_call_log(log)
        expected = g.meta["call_log"][name]
        assert len(calls) == len(expected), (name, calls)
        for got_call, exp in zip(calls, expected):
            assert math.isclose(got_call["t"], exp["t"], rel_tol=1e-6), (name, got_call, exp)
            assert (got_call["txt"], got_call["id"]) == (exp["txt"], exp["id"]), (name, got_call, exp)
            assert math.isclose(got_call["guidance"], exp["guidance"]), (name, got_call, exp)
            assert exp["id"] == "None" or math.isclose(exp["id_weight"], case["id_weight"]), (name, exp)  # one weight
