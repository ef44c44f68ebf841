"""Chroma (comfy.ldm.chroma) with PuLID: the same block replacements at the same token layout, so the ID goes
in wherever the PuLID checkpoint fits; true CFG (Chroma's normal mode), masks and per-item IDs included."""

from __future__ import annotations

import pytest
import torch
from conftest import COMFYUI_ROOT, NO_COMFYUI, setup_comfyui

if COMFYUI_ROOT is None:
    pytest.skip(NO_COMFYUI, allow_module_level=True)
setup_comfyui()

import _compat as C  # noqa: E402
import _tiny_flux as T  # noqa: E402

from comfyui_pulid_flux.integration.patch import apply_pulid_flux  # noqa: E402


@pytest.fixture(scope="module")
def chroma():
    return T.tiny_chroma_patcher(), T.pulid_patcher(T.tiny_pulid_model())


def run(model, **kwargs):
    kwargs.setdefault("negative", T.tiny_chroma_cond(1, tokens=7))
    return T.sample(model, steps=3, cfg=kwargs.pop("cfg", 3.0), positive=T.tiny_chroma_cond(0), **kwargs)


def test_chroma_gets_the_id_with_true_cfg_masks_and_per_item_ids(chroma, monkeypatch):
    base, pp = chroma
    log = T.instrument_tables(monkeypatch)
    a, b = T.tiny_embedding(seed=2), T.tiny_embedding(seed=3)
    plain = run(base, batch=2)
    out = run(apply_pulid_flux(base, pp, a), batch=2)
    assert torch.isfinite(out).all() and (out - plain).abs().max() > 1e-3
    assert {e[2] for e in log if e[0] == "attend"} == {4}  # cond + uncond rows of a batch of 2
    assert {tuple(e[3].tolist()) for e in log if e[0] == "attend"} == {(1, 1, 0, 0)}  # uncond ID, then the ID
    both = type(a)(tokens=torch.cat([a.tokens, b.tokens]), uncond=a.uncond)
    per_item = run(apply_pulid_flux(base, pp, both), batch=2)
    torch.testing.assert_close(per_item[0], out[0], atol=1e-5, rtol=0)  # item 0 gets a, as with a for all
    assert (per_item[1] - out[1]).abs().max() > 1e-3
    left = torch.zeros(1, 32, 32)
    left[..., :16] = 1.0
    masked = run(apply_pulid_flux(base, pp, a, mask=left), batch=2)
    assert torch.isfinite(masked).all() and not torch.equal(masked, out) and not torch.equal(masked, plain)


def test_chroma_weight_zero_and_inactive_window_are_the_plain_model(chroma):
    base, pp = chroma
    plain = run(base)
    assert apply_pulid_flux(base, pp, T.tiny_embedding(), weight=0.0) is base
    assert torch.equal(run(apply_pulid_flux(base, pp, T.tiny_embedding(), start_step=3)), plain)
    assert torch.equal(run(base), plain)  # nothing left behind


def test_chroma_that_does_not_fit_the_pulid_file_is_refused(chroma):
    import comfy.model_base

    _, pp = chroma
    wide = T.tiny_chroma_patcher(hidden_size=96, axes_dim=[16, 16, 16], out_dim=96)
    before = T.structure(wide.model_options)
    with pytest.raises(ValueError, match=r"the Chroma model Chroma \(hidden 96, 3 double \+ 5 single blocks.*does not "
                                         r"fit the PuLID model tiny_pulid\.safetensors \(hidden 64.*full-size Chroma"):
        apply_pulid_flux(wide, pp, T.tiny_embedding())
    assert T.structure(wide.model_options) == before
    radiance = T.tiny_chroma_patcher()
    radiance.model.__class__ = comfy.model_base.ChromaRadiance  # a Chroma subclass with another token layout
    with pytest.raises(ValueError, match=r"needs a Flux\.1 or Chroma MODEL .*ChromaRadiance"):
        apply_pulid_flux(radiance, pp, T.tiny_embedding())


def test_chroma_with_a_reference_latent_counts_no_reference_tokens(chroma):
    """Chroma inherits Flux's ref_latents extra cond but keeps the references out of its sequence: the ID lands
    on the same tokens as without the reference, so the images are bit-identical."""
    from comfy_extras.nodes_edit_model import ReferenceLatent

    base, pp = chroma
    reference = {"samples": torch.randn(1, T.TINY_FLUX["in_channels"], 6, 4, generator=torch.Generator().manual_seed(4))}
    positive = T.tiny_chroma_cond(0)
    with_ref = C.run_node(ReferenceLatent, conditioning=positive, latent=reference)[0]
    m = apply_pulid_flux(base, pp, T.tiny_embedding())
    plain_ref = T.sample(base, steps=2, cfg=1.0, positive=with_ref)
    assert torch.equal(plain_ref, T.sample(base, steps=2, cfg=1.0, positive=positive))  # Chroma ignores it
    out = T.sample(m, steps=2, cfg=1.0, positive=with_ref)
    assert torch.equal(out, T.sample(m, steps=2, cfg=1.0, positive=positive)) and not torch.equal(out, plain_ref)
