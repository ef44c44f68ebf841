"""Block-level contract of the Flux patch objects (called directly with stub `original_block`s inside the
call their APPLY_MODEL wrapper planned), including the behaviours of newer ComfyUI that can be exercised on
0.3.64 and the forwards of step-cache packs that call the patches without transformer_options."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from conftest import COMFYUI_ROOT, NO_COMFYUI, setup_comfyui

if COMFYUI_ROOT is None:
    pytest.skip(NO_COMFYUI, allow_module_level=True)
setup_comfyui()

import _tiny_flux as T  # noqa: E402
from _golden_models import ca_forward  # noqa: E402

from comfyui_pulid_flux.integration.patch import apply_pulid_flux  # noqa: E402

D = T.TINY_FLUX["hidden_size"]
SIGMA = torch.tensor([0.5])


@pytest.fixture(scope="module")
def env():
    base = T.tiny_flux_patcher()
    pm = T.tiny_pulid_model()
    return base, pm, T.pulid_patcher(pm)


def dit(model) -> dict:
    return model.model_options["transformer_options"]["patches_replace"]["dit"]


def options(chunks=(0,), **extra) -> dict:
    return {"sigmas": SIGMA, "cond_or_uncond": list(chunks), "unknown_future_key": object(), **extra}


def planned(model, grid, fn, chunks=(0,), rows=1, ref_tokens=(), latent=None, to=None):
    """Run fn() inside the model call that every PuLID APPLY_MODEL wrapper of `model` planned: a latent of
    `rows` rows whose token grid is `grid` (or the given latent (h, w)), Kontext references of the given
    token grids."""
    wrappers = model.get_wrappers("apply_model", "pulid_flux")
    h, w = latent or (grid[0] * 2, grid[1] * 2)
    x = torch.zeros(rows, 16, h, w)
    refs = [torch.zeros(1, 16, gh * 2, gw * 2) for gh, gw in ref_tokens]
    to = options(chunks) if to is None else to

    class Executor:
        class_obj = model.model

        def __init__(self, rest):
            self.rest = rest

        def __call__(self, *args, **kwargs):
            if not self.rest:
                return fn()
            return self.rest[0](Executor(self.rest[1:]), *args, **kwargs)

    kwargs = {"ref_latents": refs} if refs else {}
    return Executor(list(wrappers))(x, SIGMA, None, torch.zeros(rows, 3, 8), None, to, **kwargs)


def in_place_double(seen: list):
    """Stub of 0.33's double block: updates img and txt IN PLACE and records what it receives."""

    def original(args):
        seen.append(args)
        args["img"].mul_(1.5)
        args["txt"].add_(1.0)
        return {"img": args["img"], "txt": args["txt"]}

    return original


def in_place_single(args):
    args["img"].mul_(1.5)
    return {"img": args["img"]}


def passthrough(args):
    return {"img": args["img"], "txt": args["txt"]}


def residual(pm, ca_index, ids, x, weight=1.0):
    with torch.no_grad():
        return weight * ca_forward(pm.pulid_ca[ca_index], ids, x)


@torch.no_grad()
def test_double_block_contract(env):
    base, pm, pp = env
    emb = T.tiny_embedding()
    m = apply_pulid_flux(base, pp, emb, weight=0.8)
    patch = dit(m)[("double_block", 0)]
    img, txt = torch.randn(2, 6, D), torch.randn(2, 7, D)
    for vec in (torch.randn(4, D), (torch.randn(2, D), torch.randn(2, D))):  # 2B rows (index_timestep_zero) / tuple
        for to in (options(), None):  # None: a third-party forward that passes no transformer_options
            seen: list = []
            args = {"img": img.clone(), "txt": txt.clone(), "vec": vec, "pe": None, "attn_mask": None,
                    "future_arg": 1}
            if to is not None:
                args["transformer_options"] = to
            out = planned(m, (2, 3), lambda a=args, s=seen: patch(a, {"original_block": in_place_double(s)}), rows=2)
            assert seen == [args] and seen[0] is args  # the received dict, passed on as is
            assert set(out) == {"img", "txt"}
            block_img = img * 1.5
            assert torch.equal(args["img"], block_img)  # our add was out of place
            torch.testing.assert_close(out["img"], block_img + residual(pm, 0, emb.tokens, block_img, 0.8))


@torch.no_grad()
def test_single_block_finds_the_image_tokens_without_transformer_options(env):
    # Step-cache packs (TeaCache, First Block Cache) call the replacements with args that hold no
    # transformer_options (or hold them in `extra`): the image tokens are located from what the APPLY_MODEL
    # wrapper learnt (token grid, Kontext reference tokens), whatever the text length.
    base, pm, pp = env
    emb = T.tiny_embedding()
    m = apply_pulid_flux(base, pp, emb)
    single = dit(m)[("single_block", 0)]
    ca = single.ca_index
    for n_txt, grid, refs in ((7, (2, 2), ()), (5, (2, 3), ((2, 2),)), (9, (1, 2), ((1, 1), (1, 1)))):
        n_img, n_ref = grid[0] * grid[1], sum(h * w for h, w in refs)
        x = torch.randn(1, n_txt + n_img + n_ref, D)
        block_x = x * 1.5
        expected = block_x.clone()
        expected[:, n_txt:n_txt + n_img] += residual(pm, ca, emb.tokens, block_x[:, n_txt:n_txt + n_img])
        for style in ("comfyui", "no_options", "options_in_extra"):
            args = {"img": x.clone(), "vec": None, "pe": None}
            extra = {"original_block": in_place_single}
            if style == "comfyui":
                args["transformer_options"] = options(img_slice=[n_txt, x.shape[1]])
            elif style == "options_in_extra":
                extra["transformer_options"] = options()
            out = planned(m, grid, lambda a=args, e=extra: single(a, e), ref_tokens=refs)
            assert set(out) == {"img"}
            torch.testing.assert_close(out["img"], expected)
            assert torch.equal(out["img"][:, :n_txt], block_x[:, :n_txt])  # text untouched
            assert torch.equal(out["img"][:, n_txt + n_img:], block_x[:, n_txt + n_img:])  # Kontext refs untouched


@torch.no_grad()
def test_kontext_reference_tokens_untouched_in_double_blocks(env):
    base, pm, pp = env
    emb = T.tiny_embedding()
    m = apply_pulid_flux(base, pp, emb)
    patch = dit(m)[("double_block", 0)]
    n_img = 6
    img = torch.randn(1, n_img + 5, D)
    out = planned(m, (2, 3), lambda: patch({"img": img.clone(), "txt": torch.randn(1, 3, D), "vec": None, "pe": None},
                                           {"original_block": in_place_double([])}), ref_tokens=((1, 5),))
    block = img * 1.5
    assert torch.equal(out["img"][:, n_img:], block[:, n_img:])
    torch.testing.assert_close(out["img"][:, :n_img], block[:, :n_img] + residual(pm, 0, emb.tokens, block[:, :n_img]))


@torch.no_grad()
def test_blocks_called_outside_a_planned_call_fail_clearly(env):
    base, _, pp = env
    patch = dit(apply_pulid_flux(base, pp, T.tiny_embedding()))[("double_block", 0)]
    with pytest.raises(RuntimeError, match=r"outside a model call it planned"):
        patch({"img": torch.randn(1, 6, D), "txt": torch.randn(1, 3, D), "vec": None, "pe": None},
              {"original_block": passthrough})


@torch.no_grad()
def test_regional_masks_put_two_identities_in_one_image(env):
    base, pm, pp = env
    a, b = T.tiny_embedding(seed=2), T.tiny_embedding(seed=3)
    left = torch.zeros(1, 64, 96)
    left[..., :48] = 1.0  # left half of a 64x96 px image -> token columns 0-2 of the 4x6 grid
    m1 = apply_pulid_flux(base, pp, a, mask=left)
    m2 = apply_pulid_flux(m1, pp, b, weight=0.6, mask=1.0 - left)
    img = torch.randn(2, 24, D)

    def call(model):
        patch = dit(model)[("double_block", 0)]
        return planned(model, (4, 6), lambda: patch({"img": img.clone(), "txt": torch.randn(2, 3, D), "vec": None,
                                                     "pe": None}, {"original_block": passthrough}), rows=2)["img"]

    out = call(m2)
    cols = torch.arange(24) % 6
    lmask, rmask = cols < 3, cols >= 3
    exp_a = img + residual(pm, 0, a.tokens, img)
    exp_b = img + residual(pm, 0, b.tokens, img, 0.6)
    torch.testing.assert_close(out[:, lmask], exp_a[:, lmask])
    torch.testing.assert_close(out[:, rmask], exp_b[:, rmask])
    # per-item masks (mask batch == latent batch): item 0 gets the ID, item 1 none
    per_item = torch.stack([torch.ones(32, 48), torch.zeros(32, 48)])
    out = call(apply_pulid_flux(base, pp, a, mask=per_item))
    assert torch.equal(out[1], img[1])
    torch.testing.assert_close(out[0], exp_a[0])


@torch.no_grad()
def test_mask_on_an_odd_latent_lands_on_the_padded_token_grid(env):
    # 72x56 px image -> latent 9x7 -> Flux pads it to 10x8 -> 5x4 tokens; a mask over pixels 0-31 of the
    # width is exactly token columns 0-1 (the APPLY_MODEL wrapper tells the patch the latent size)
    base, pm, pp = env
    emb = T.tiny_embedding()
    mask = torch.zeros(1, 72, 56)
    mask[..., :32] = 1.0
    m = apply_pulid_flux(base, pp, emb, mask=mask)
    patch = dit(m)[("double_block", 0)]
    img = torch.randn(1, 20, D)
    out = planned(m, (5, 4), lambda: patch({"img": img.clone(), "txt": torch.randn(1, 3, D), "vec": None, "pe": None},
                                           {"original_block": passthrough}), latent=(9, 7))["img"]
    cols = torch.arange(20) % 4
    assert torch.equal(out[:, cols >= 2], img[:, cols >= 2])  # nothing leaks past the mask edge
    torch.testing.assert_close(out[:, cols < 2], (img + residual(pm, 0, emb.tokens, img))[:, cols < 2])


@torch.no_grad()
def test_uncond_rows_per_mode(env):
    base, pm, pp = env
    emb = T.tiny_embedding()
    img = torch.randn(4, 6, D)  # chunks [uncond, cond] x latent batch 2
    for mode in ("uncond_id", "none", "same"):
        m = apply_pulid_flux(base, pp, emb, uncond_mode=mode)
        patch = dit(m)[("double_block", 0)]
        out = planned(m, (2, 3), lambda p=patch: p({"img": img.clone(), "txt": torch.randn(4, 3, D), "vec": None,
                                                    "pe": None}, {"original_block": passthrough}),
                      chunks=(1, 0), rows=4)["img"]
        torch.testing.assert_close(out[2:], img[2:] + residual(pm, 0, emb.tokens, img[2:]))
        if mode == "none":
            assert torch.equal(out[:2], img[:2])
        else:
            ids = emb.uncond if mode == "uncond_id" else emb.tokens
            torch.testing.assert_close(out[:2], img[:2] + residual(pm, 0, ids, img[:2]))


def test_wrapper_forwards_every_argument(env):
    base, _, pp = env
    m = apply_pulid_flux(base, pp, T.tiny_embedding())
    (planner,) = m.get_wrappers("apply_model", "pulid_flux")
    seen = {}

    class Executor:
        class_obj = base.model

        def __call__(self, *args, **kwargs):
            seen["args"], seen["kwargs"] = args, kwargs
            return "ok"

    to = options()
    x = torch.zeros(1, 16, 6, 5)
    c = torch.zeros(1, 3, 8)
    extra = dict(y=torch.zeros(1, 4), guidance=None, ref_latents_method="index", future=object())
    assert planner(Executor(), x, SIGMA, None, c, None, to, **extra) == "ok"
    assert seen["args"][:5] == (x, SIGMA, None, c, None) and seen["kwargs"] == extra
    passed = seen["args"][5]  # the call's options, plus this apply's plan under its own key
    assert passed is not to and all(passed[k] is v for k, v in to.items()) and len(passed) == len(to) + 1
    assert to == options() | {"unknown_future_key": to["unknown_future_key"]}  # nothing written into the options
    assert planner(Executor(), x=x, t=SIGMA, c_crossattn=c, transformer_options=to) == "ok"  # by name too


def test_clone_shares_immutable_patch_objects(env):
    base, pm, pp = env
    m1 = apply_pulid_flux(base, pp, T.tiny_embedding())
    first = dict(dit(m1))
    c = m1.clone()
    assert all(dit(c)[k] is v for k, v in first.items())
    p = first[("double_block", 0)]
    assert copy.deepcopy(p) is p
    for field in ("inner", "ca_index", "applied"):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(p, field, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.applied.weight = 2.0
    m2 = apply_pulid_flux(m1, pp, T.tiny_embedding(seed=4))
    assert dict(dit(m1)) == first and all(dit(m1)[k] is v for k, v in first.items())
    assert all(dit(m2)[k].inner is v for k, v in first.items())  # chained, not dropped
    assert p.to(torch.device("cpu")) is p and p.to(torch.float16) is p and p.to(None) is p
    assert p.models() == [p.applied.prepared.patcher]
    assert p.cleanup() is None  # nothing wrapped: a no-op


def test_wrapped_patch_keeps_its_to_models_and_cleanup(env):
    base, _, pp = env
    calls = []

    class Foreign:  # another pack's patch object with the full contract
        def __call__(self, args, extra):
            return extra["original_block"](args)

        def to(self, device_or_dtype):
            calls.append(("to", device_or_dtype))
            return Foreign()

        def models(self):
            return ["foreign-model"]

        def cleanup(self):
            calls.append("cleanup")
            return "foreign-cleanup"

    pre = base.clone()
    pre.set_model_patch_replace(Foreign(), "dit", "double_block", 0)
    p = dit(apply_pulid_flux(pre, pp, T.tiny_embedding()))[("double_block", 0)]
    assert p.models() == [p.applied.prepared.patcher, "foreign-model"]
    moved = p.to(torch.device("cpu"))
    assert moved is not p and isinstance(moved.inner, Foreign) and moved.inner is not p.inner
    assert moved.applied is p.applied and moved.ca_index == p.ca_index
    assert ("to", torch.device("cpu")) in calls  # (ComfyUI's ModelPatcher.__del__ may call .to too)
    assert p.cleanup() == "foreign-cleanup"
    assert calls[-1] == "cleanup"  # ComfyUI >= 0.17 calls cleanup() on top-level patches only: forwarded
