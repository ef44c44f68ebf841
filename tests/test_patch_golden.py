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
PATCH = 2  # official packing (sampling.py prepare): 2x2 latent patches per token


def pack(x):
    return rearrange(x, "b c (h ph) (w pw) -> b (h w) (c ph pw)", ph=PATCH, pw=PATCH)


@pytest.fixture(scope="module")
def flux_golden():
    from conftest import Golden

    return Golden("flux_patched")


@pytest.fixture(scope="module")
def golden_models(flux_golden):
    base = T.golden_flux_patcher(flux_golden)
    pm = T.golden_pulid_model(flux_golden)
    return base, pm, T.pulid_patcher(pm)


@torch.no_grad()
def test_flux_patched_matches_official(flux_golden, golden_models):
    g, (base, _, pp) = flux_golden, golden_models
    io = g.io

    def run(model):
        out = T.comfy_forward(model, io["in.noise_unpacked"], io["in.timesteps"], io["in.txt"], io["in.y"],
                              io["in.guidance"])
        return pack(out)

    unpatched = run(base)
    torch.testing.assert_close(unpatched, io["out.unpatched"], atol=ATOL, rtol=RTOL)
    cases = {
        "out.patched": (io["in.id"], float(io["in.id_weight"])),
        "out.patched_w0p7": (io["in.id"], float(io["in.id_weight_b"])),
        "out.patched_id_broadcast": (io["in.id"][:1], float(io["in.id_weight"])),
    }
    for name, (ids, weight) in cases.items():
        model = apply_pulid_flux(base, pp, IDEmbedding(tokens=ids), weight=weight, uncond_mode="none")
        out = run(model)
        torch.testing.assert_close(out, io[name], atol=ATOL, rtol=RTOL, msg=lambda m, n=name: f"{n}: {m}")
        assert (out - unpatched).abs().max() > 100 * ATOL  # the ID term is really there


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


def _reconstruct_call_log(log, ca_refs) -> list[dict]:
    """One entry per (model call, chunk), positive first: which ID the CA modules attended to."""
    calls = []
    for entry in log:
        if entry[0] == "call":
            calls.append({"t": entry[1], "chunks": entry[2], "guidance": entry[3][0], "ids": []})
        else:
            if entry[0] != "attend":
                continue
            ca, rows, k = entry[1:4]
            name = next((n for n, ref in ca_refs[ca].items() if torch.equal(ref, k)), "unknown")
            calls[-1]["ids"].append((rows, name))
    out = []
    for c in calls:
        ids = {}
        if c["ids"]:
            per_call = c["ids"][: len(c["chunks"])]  # the first CA module's groups, in chunk order
            for chunk, (_, name) in zip(c["chunks"], per_call):
                ids[chunk] = name
        for chunk in sorted(c["chunks"]):
            out.append({"t": c["t"], "txt": "pos" if chunk == 0 else "neg", "id": ids.get(chunk, "None"),
                        "guidance": c["guidance"]})
    return out


@torch.no_grad()
def test_flux_denoise_matches_official(flux_golden):
    import comfy.patcher_extension as pe
    import comfy.samplers
    from conftest import Golden

    g = Golden("flux_denoise")
    shared = g.meta["weights_file_shared_with"].removesuffix(".weights.safetensors")
    assert shared == flux_golden.name
    io = g.io
    base = T.golden_flux_patcher(flux_golden)
    pm = T.golden_pulid_model(flux_golden)
    log = T.instrument_cas(pm)  # same weights, logging project_id()/attend()
    pp = T.pulid_patcher(pm)
    sigmas = io["in.timesteps"].float()
    assert torch.allclose(sigmas.double(), torch.tensor(g.meta["timesteps"], dtype=torch.float64))
    ids = {"id": io["in.id"], "uncond_id": io["in.uncond_id"]}
    ca_refs = {ca: {n: ca.project_id(t)[0] for n, t in ids.items()} for ca in pm.pulid_ca}

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
                                     uncond_mode="uncond_id" if emb.uncond is not None else "none")
        model = model.clone()
        log.clear()
        model.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "test_probe", _call_log_probe(log))
        guider = _official_guider(model, case["true_cfg"], case.get("timestep_to_start_cfg", 1))
        guider.set_conds(positive, negative)
        out = guider.sample(io["in.noise_unpacked"], torch.zeros_like(io["in.noise_unpacked"]),
                            comfy.samplers.sampler_object("euler"), sigmas, disable_pbar=True, seed=0)
        got = pack(base.model.latent_format.process_in(out))
        torch.testing.assert_close(got, io[f"out.{name}"], atol=ATOL, rtol=RTOL, msg=lambda m, n=name: f"{n}: {m}")
        calls = _reconstruct_call_log(log, ca_refs)
        expected = g.meta["call_log"][name]
        assert len(calls) == len(expected), (name, calls)
        for got_call, exp in zip(calls, expected):
            assert math.isclose(got_call["t"], exp["t"], rel_tol=1e-6), (name, got_call, exp)
            assert (got_call["txt"], got_call["id"]) == (exp["txt"], exp["id"]), (name, got_call, exp)
            assert math.isclose(got_call["guidance"], exp["guidance"]), (name, got_call, exp)
