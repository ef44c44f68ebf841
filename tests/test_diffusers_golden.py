"""Golden parity of the diffusers adapter: the tiny Flux of the flux_patched / flux_denoise golden sets, converted
to diffusers' FluxTransformer2DModel with diffusers' own converter, patched through forward hooks only, against
the official outputs; the official denoise loop through the real FluxPipeline and its FlowMatchEulerDiscreteScheduler,
call log included. Every shape, argument and bound comes from the golden sidecars."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("diffusers")
import _diffusers_flux as DF  # noqa: E402
from conftest import Golden  # noqa: E402

from comfyui_pulid_flux.diffusers_pulid import attach  # noqa: E402
from comfyui_pulid_flux.pulid import fold  # noqa: E402
from comfyui_pulid_flux.pulid.embedding import IDEmbedding  # noqa: E402

ATOL, RTOL = 1e-5, 1e-4  # spec §7: Flux in fp32, as the ComfyUI golden tests


@pytest.fixture(scope="module")
def golden_setup():
    g = Golden("flux_patched")
    return g, DF.golden_transformer(g), DF.golden_pulid_model(g, Golden("idformer"))


def forward(model, io, **kw):
    return model(hidden_states=io["in.img"], timestep=io["in.timesteps"], guidance=io["in.guidance"],
                 pooled_projections=io["in.y"], encoder_hidden_states=io["in.txt"], txt_ids=io["in.txt_ids"][0],
                 img_ids=io["in.img_ids"][0], return_dict=False, **kw)[0]


def state(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict(keep_vars=True).items()}


@pytest.mark.parametrize("folded", [True, False], ids=["folded", "reference"])
@torch.no_grad()
def test_patched_transformer_matches_official_and_removal_is_exact(golden_setup, folded):
    g, model, pm = golden_setup
    io = g.io
    before_state, before_attrs = state(model), set(vars(model))
    unpatched = forward(model, io)
    torch.testing.assert_close(unpatched, io["out.unpatched"], atol=ATOL, rtol=RTOL)
    cases = {"out.patched": (io["in.id"], float(io["in.id_weight"])),
             "out.patched_w0p7": (io["in.id"], float(io["in.id_weight_b"])),
             "out.patched_id_broadcast": (io["in.id"][:1], float(io["in.id_weight"]))}
    for name, (ids, weight) in cases.items():
        with attach(model, pm, IDEmbedding(tokens=ids), id_weight=weight, folded=folded, track_steps=False):
            out = forward(model, io)
        torch.testing.assert_close(out, io[name], atol=ATOL, rtol=RTOL, msg=lambda m, n=name: f"{n}: {m}")
        assert (out - unpatched).abs().max() > 100 * ATOL  # the ID term is really there
    # removed: no hook, no attribute, same tensors, and the output bit-identical to the never-patched one
    assert set(vars(model)) == before_attrs
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    after = state(model)
    assert after.keys() == before_state.keys() and all(torch.equal(after[k], before_state[k]) for k in after)
    assert torch.equal(forward(model, io), unpatched)


@pytest.mark.parametrize("folded", [True, False], ids=["folded", "reference"])
@torch.no_grad()
def test_hook_points_and_raw_ca_outputs_match_official(golden_setup, monkeypatch, folded):
    g, model, pm = golden_setup
    io, raw = g.io, {}
    for table in (fold.FoldedID, fold.ReferenceID):
        def logged(self, ca_index, img, select, _orig=table.residual):
            raw[ca_index] = _orig(self, ca_index, img, select)
            return raw[ca_index]

        monkeypatch.setattr(table, "residual", logged)
    with attach(model, pm, io["in.id"], id_weight=float(io["in.id_weight"]), folded=folded, track_steps=False) as a:
        hooked = {str(ca): f"{kind}[{i}]" for kind, blocks in (("double_blocks", model.transformer_blocks),
                                                                ("single_blocks", model.single_transformer_blocks))
                  for i, b in enumerate(blocks) for ca in [getattr(next(iter(b._forward_hooks.values()), None),
                                                                   "ca_index", None)] if ca is not None}
        assert len(a._handles) == 2 + g.meta["pulid_ca_constructor"]["count"]
        forward(model, io)
    assert hooked == g.meta["ca_index_to_hook_point"]
    ref = g.seq("out.ca_raw")
    assert sorted(raw) == list(range(len(ref)))
    for k, expected in enumerate(ref):
        torch.testing.assert_close(raw[k], expected, atol=ATOL, rtol=RTOL, msg=lambda m, k=k: f"ca_raw.{k}: {m}")


# --------------------------------------------------------------------------------------- the official denoise loop
@pytest.fixture(scope="module")
def denoise_setup(golden_setup):
    g, model, pm = golden_setup
    d = Golden("flux_denoise")
    assert d.meta["weights_file_shared_with"].removesuffix(".weights.safetensors") == g.name
    return d, model, pm


def golden_pipeline(model, io):
    """FluxPipeline around the golden transformer with FLUX.1's scheduler configuration (dynamic shifting: its
    calculate_shift and exponential time shift are the official get_schedule) and no VAE (packed latents out).

    The golden negative prompt has fewer tokens than the positive one, and FluxPipeline refuses prompt and negative
    embeddings of different lengths (real T5 output is always padded to max_sequence_length). So the negative prompt
    goes through FluxPipeline's own encode_prompt with stub text encoders that return the golden negative
    embeddings, as the golden generator fed the official prepare() with stub encoders."""
    from diffusers import FluxPipeline

    return FluxPipeline(scheduler=DF.flux_scheduler(), vae=None, text_encoder=DF.StubEncoder(io["in.neg_vec"], True),
                        tokenizer=DF.StubTokenizer(), text_encoder_2=DF.StubEncoder(io["in.neg_txt"], False),
                        tokenizer_2=DF.StubTokenizer(), transformer=model)


def run_case(pipe, d, case):
    io = d.io
    _, _, h, w = io["in.noise_unpacked"].shape
    kw = {"negative_prompt": "golden negative"} if "neg_txt" in case else {}
    return pipe(prompt_embeds=io["in.txt"], pooled_prompt_embeds=io["in.vec"], latents=io["in.img"],
                height=h * pipe.vae_scale_factor, width=w * pipe.vae_scale_factor,
                num_inference_steps=d.meta["num_steps"], guidance_scale=case["guidance"],
                true_cfg_scale=case["true_cfg"], output_type="latent", **kw).images


@pytest.mark.parametrize("folded", [True, False], ids=["folded", "reference"])
@torch.no_grad()
def test_official_denoise_loop_through_fluxpipeline(denoise_setup, folded):
    d, model, pm = denoise_setup
    io, pipe = d.io, golden_pipeline(model, d.io)
    assert not io["in.txt_ids"].any() and not io["in.neg_txt_ids"].any()  # FluxPipeline's text ids are zeros
    for name, case in d.meta["cases"].items():
        adapter, calls = None, []
        if case["id"] is not None:
            emb = IDEmbedding(tokens=io["in.id"], uncond=io["in.uncond_id"] if "uncond_id" in case else None)
            adapter = attach(model, pm, emb, id_weight=case["id_weight"], start_step=case["start_step"],
                             timestep_to_start_cfg=case.get("timestep_to_start_cfg", 1), folded=folded)

        def probe(module, args, kwargs, adapter=adapter, calls=calls):
            assert torch.equal(kwargs["img_ids"], io["in.img_ids"][0])
            txt = kwargs["encoder_hidden_states"]
            which = "pos" if torch.equal(txt, io["in.txt"]) else "neg" if torch.equal(txt, io["in.neg_txt"]) else "?"
            on = adapter is not None and adapter.call.active
            calls.append({"t": float(kwargs["timestep"][0]), "txt": which, "guidance": float(kwargs["guidance"][0]),
                          "id": ("uncond_id" if adapter.uncond else "id") if on else "None",
                          "skipped": adapter is not None and adapter.uncond and adapter.step < adapter.cfg_start})

        probe_handle = model.register_forward_pre_hook(probe, with_kwargs=True)
        try:
            got = run_case(pipe, d, case)
        finally:
            probe_handle.remove()
            if adapter is not None:
                adapter.remove()
        torch.testing.assert_close(got, io[f"out.{name}"], atol=ATOL, rtol=RTOL, msg=lambda m, n=name: f"{n}: {m}")
        expected = d.meta["call_log"][name]
        # FluxPipeline always runs the negative pass; before timestep_to_start_cfg the adapter returns the step's
        # positive prediction for it (so its CFG mix is exactly the positive one), which the official loop skips
        skipped = [c for c in calls if c["skipped"]]
        assert [c["t"] for c in skipped] == [c["t"] for c in calls if c["txt"] == "neg"][:len(skipped)]
        assert len(skipped) == (min(case.get("timestep_to_start_cfg", 1), d.meta["num_steps"])
                                if case["true_cfg"] > 1 and adapter is not None else 0)
        made = [c for c in calls if not c["skipped"]]
        if adapter is None:  # no adapter: FluxPipeline's own loop (no negative pass in these cases)
            assert case["true_cfg"] == 1.0
        assert len(made) == len(expected), (name, made)
        for c, exp in zip(made, expected):
            assert math.isclose(c["t"], exp["t"], rel_tol=1e-6), (name, c, exp)
            assert (c["txt"], c["id"]) == (exp["txt"], exp["id"]), (name, c, exp)
            assert math.isclose(c["guidance"], exp["guidance"]), (name, c, exp)
