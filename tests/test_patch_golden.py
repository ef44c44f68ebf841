"""Golden parity of the Flux patch: the official PuLID-Flux forward, reproduced through
ComfyUI's own Flux (0.3.64 / 0.33) with `integration.patch` hooked in via patches_replace.

Every constructor argument, weight and input comes from the golden sidecars. The denoise loop (true CFG
included) runs through ComfyUI's own CFGGuider in test_cfg_golden.py.
"""

from __future__ import annotations

import pytest
import torch
from conftest import COMFYUI_ROOT, NO_COMFYUI, setup_comfyui

if COMFYUI_ROOT is None:
    pytest.skip(NO_COMFYUI, allow_module_level=True)
setup_comfyui()

import _tiny_flux as T  # noqa: E402
from einops import rearrange  # noqa: E402

from comfyui_pulid_flux.integration.patch import apply_pulid_flux  # noqa: E402
from comfyui_pulid_flux.pulid.embedding import IDEmbedding  # noqa: E402

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
