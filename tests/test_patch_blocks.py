"""Block-level contract of the Flux patch objects (called directly with stub `original_block`s), including
the behaviours of newer ComfyUI that can be exercised on 0.3.64 (comfyui-newer.md, tests 1-4)."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import COMFYUI_ROOT, NO_COMFYUI, setup_comfyui

if COMFYUI_ROOT is None:
    pytest.skip(NO_COMFYUI, allow_module_level=True)
setup_comfyui()

import _tiny_flux as T  # noqa: E402

from comfyui_pulid_flux.pulid.patch import (  # noqa: E402
    GRID_KEY,
    RUN_KEY,
    TXT_KEY,
    apply_pulid_flux,
    diffusion_model_wrapper,
)

D = T.TINY_FLUX["hidden_size"]
SIGMA = torch.tensor([0.5])


@pytest.fixture(scope="module")
def env():
    base = T.tiny_flux_patcher()
    pm = T.tiny_pulid_model()
    return base, pm, T.pulid_patcher(pm)


def dit(model) -> dict:
    return model.model_options["transformer_options"]["patches_replace"]["dit"]


def options(grid=None, chunks=(0,), **extra) -> dict:
    to = {"sigmas": SIGMA, "cond_or_uncond": list(chunks), "unknown_future_key": object(), **extra}
    if grid is not None:
        to[GRID_KEY] = grid
    return to


def in_place_double(seen: list):
    """Stub of 0.33's double block: updates img and txt IN PLACE and checks what it receives."""

    def original(args):
        assert args["transformer_options"] is not None
        seen.append(args)
        args["img"].mul_(1.5)
        args["txt"].add_(1.0)
        return {"img": args["img"], "txt": args["txt"]}

    return original


def in_place_single(args):
    assert args["transformer_options"] is not None
    args["img"].mul_(1.5)
    return {"img": args["img"]}


def residual(pm, ca_index, ids, x, weight=1.0):
    with torch.no_grad():
        return weight * pm.pulid_ca[ca_index](ids, x)


@torch.no_grad()
def test_double_block_contract(env):
    base, pm, pp = env
    emb = T.tiny_embedding()
    m = apply_pulid_flux(base, pp, emb, weight=0.8)
    patch = dit(m)[("double_block", 0)]
    img, txt = torch.randn(2, 6, D), torch.randn(2, 7, D)
    to = options(grid=(2, 3))
    for vec in (torch.randn(4, D), (torch.randn(2, D), torch.randn(2, D))):  # 2B rows (index_timestep_zero) / tuple
        seen: list = []
        args = {"img": img.clone(), "txt": txt.clone(), "vec": vec, "pe": None, "attn_mask": None,
                "transformer_options": to, "future_arg": 1}
        out = patch(args, {"original_block": in_place_double(seen)})
        assert seen == [args] and seen[0] is args  # the received dict, passed on as is
        assert set(out) == {"img", "txt"}
        block_img = img * 1.5
        assert torch.equal(args["img"], block_img)  # our add was out of place
        torch.testing.assert_close(out["img"], block_img + residual(pm, 0, emb.tokens, block_img, 0.8))
        assert to[TXT_KEY] == txt.shape[1]


@torch.no_grad()
def test_single_block_text_split_with_and_without_img_slice(env):
    base, pm, pp = env
    emb = T.tiny_embedding()
    m = apply_pulid_flux(base, pp, emb)
    double, single = dit(m)[("double_block", 0)], dit(m)[("single_block", 0)]
    ca = next(i for i, p in enumerate(pm.pulid_ca) if p is single.effect.ca_patcher.model[single.ca_index])
    for n_txt, grid, n_ref in ((7, (2, 2), 0), (5, (2, 3), 4), (9, (1, 2), 2)):  # token counts change per call
        n_img = grid[0] * grid[1]
        x = torch.randn(1, n_txt + n_img + n_ref, D)
        block_x = x * 1.5
        expected = block_x.clone()
        expected[:, n_txt:n_txt + n_img] += residual(pm, ca, emb.tokens, block_x[:, n_txt:n_txt + n_img])
        with_slice = options(grid=grid, img_slice=[n_txt, x.shape[1]])
        without = options(grid=grid)
        double({"img": torch.randn(1, n_img + n_ref, D), "txt": torch.randn(1, n_txt, D), "vec": None, "pe": None,
                "transformer_options": without}, {"original_block": in_place_double([])})
        for to in (with_slice, without):
            args = {"img": x.clone(), "vec": None, "pe": None, "attn_mask": None, "transformer_options": to}
            out = single(args, {"original_block": in_place_single})
            assert set(out) == {"img"}
            torch.testing.assert_close(out["img"], expected)
            assert torch.equal(out["img"][:, :n_txt], block_x[:, :n_txt])  # text untouched
            assert torch.equal(out["img"][:, n_txt + n_img:], block_x[:, n_txt + n_img:])  # Kontext refs untouched


@torch.no_grad()
def test_kontext_reference_tokens_untouched_in_double_blocks(env):
    base, pm, pp = env
    emb = T.tiny_embedding()
    patch = dit(apply_pulid_flux(base, pp, emb))[("double_block", 0)]
    n_img, n_ref = 6, 5
    img = torch.randn(1, n_img + n_ref, D)
    for to in (options(grid=(2, 3)), options(reference_image_num_tokens=[n_ref])):
        out = patch({"img": img.clone(), "txt": torch.randn(1, 3, D), "vec": None, "pe": None,
                     "transformer_options": to}, {"original_block": in_place_double([])})
        block = img * 1.5
        assert torch.equal(out["img"][:, n_img:], block[:, n_img:])
        torch.testing.assert_close(out["img"][:, :n_img], block[:, :n_img] + residual(pm, 0, emb.tokens, block[:, :n_img]))


@torch.no_grad()
def test_regional_masks_put_two_identities_in_one_image(env):
    base, pm, pp = env
    a, b = T.tiny_embedding(seed=2), T.tiny_embedding(seed=3)
    left = torch.zeros(1, 64, 96)
    left[..., :48] = 1.0  # left half of a 64x96 px image -> token columns 0-2 of the 4x6 grid
    m1 = apply_pulid_flux(base, pp, a, mask=left)
    m2 = apply_pulid_flux(m1, pp, b, weight=0.6, mask=1.0 - left)
    img = torch.randn(2, 24, D)
    out = dit(m2)[("double_block", 0)]({"img": img.clone(), "txt": torch.randn(2, 3, D), "vec": None, "pe": None,
                                        "transformer_options": options(grid=(4, 6))},
                                       {"original_block": lambda args: {"img": args["img"], "txt": args["txt"]}})
    cols = torch.arange(24) % 6
    lmask, rmask = cols < 3, cols >= 3
    exp_a = img + residual(pm, 0, a.tokens, img)
    exp_b = img + residual(pm, 0, b.tokens, img, 0.6)
    torch.testing.assert_close(out["img"][:, lmask], exp_a[:, lmask])
    torch.testing.assert_close(out["img"][:, rmask], exp_b[:, rmask])
    # per-item masks (mask batch == latent batch): item 0 gets the ID, item 1 none
    per_item = torch.stack([torch.ones(32, 48), torch.zeros(32, 48)])
    p = dit(apply_pulid_flux(base, pp, a, mask=per_item))[("double_block", 0)]
    out = p({"img": img.clone(), "txt": torch.randn(2, 3, D), "vec": None, "pe": None,
             "transformer_options": options(grid=(4, 6))},
            {"original_block": lambda args: {"img": args["img"], "txt": args["txt"]}})
    assert torch.equal(out["img"][1], img[1])
    torch.testing.assert_close(out["img"][0], exp_a[0])


@torch.no_grad()
def test_mask_on_an_odd_latent_lands_on_the_padded_token_grid(env):
    # 72x56 px image -> latent 9x7 -> Flux pads it to 10x8 -> 5x4 tokens; a mask over pixels 0-31 of the
    # width is exactly token columns 0-1 (the DIFFUSION_MODEL wrapper tells the patch the latent size)
    base, pm, pp = env
    emb = T.tiny_embedding()
    mask = torch.zeros(1, 72, 56)
    mask[..., :32] = 1.0
    patch = dit(apply_pulid_flux(base, pp, emb, mask=mask))[("double_block", 0)]
    img = torch.randn(1, 20, D)

    class Executor:
        class_obj = base.model.diffusion_model

        def __call__(self, *args, **kwargs):
            return patch({"img": img.clone(), "txt": torch.randn(1, 3, D), "vec": None, "pe": None,
                          "transformer_options": args[7]},
                         {"original_block": lambda a: {"img": a["img"], "txt": a["txt"]}})["img"]

    x = torch.zeros(1, 16, 9, 7)
    out = diffusion_model_wrapper(Executor(), x, SIGMA, None, None, None, None, None, options())
    cols = torch.arange(20) % 4
    assert torch.equal(out[:, cols >= 2], img[:, cols >= 2])  # nothing leaks past the mask edge
    torch.testing.assert_close(out[:, cols < 2], (img + residual(pm, 0, emb.tokens, img))[:, cols < 2])


@torch.no_grad()
def test_uncond_rows_per_mode(env):
    base, pm, pp = env
    emb = T.tiny_embedding()
    img = torch.randn(4, 6, D)  # chunks [uncond, cond] x latent batch 2
    for mode in ("uncond_id", "none", "same"):
        patch = dit(apply_pulid_flux(base, pp, emb, uncond_mode=mode))[("double_block", 0)]
        out = patch({"img": img.clone(), "txt": torch.randn(4, 3, D), "vec": None, "pe": None,
                     "transformer_options": options(grid=(2, 3), chunks=(1, 0))},
                    {"original_block": lambda args: {"img": args["img"], "txt": args["txt"]}})["img"]
        torch.testing.assert_close(out[2:], img[2:] + residual(pm, 0, emb.tokens, img[2:]))
        if mode == "none":
            assert torch.equal(out[:2], img[:2])
        else:
            ids = emb.uncond if mode == "uncond_id" else emb.tokens
            torch.testing.assert_close(out[:2], img[:2] + residual(pm, 0, ids, img[:2]))


def test_wrappers_forward_unknown_arguments(env):
    base, _, pp = env
    m = apply_pulid_flux(base, pp, T.tiny_embedding())
    (outer,) = m.get_wrappers("outer_sample", "pulid_flux")
    seen = {}

    class Guider:
        model_patcher = m
        model_options = {"transformer_options": {"keep": 1}}

    class Executor:
        class_obj = Guider()

        def __call__(self, *args, **kwargs):
            seen["args"], seen["kwargs"] = args, kwargs
            seen["run"] = dict(Guider.model_options["transformer_options"].get(RUN_KEY, {}))
            return "done"

    extra = dict(latent_shapes=[(1, 16, 4, 4)], force_full_load=True, force_offload=False)
    assert outer(Executor(), 1, 2, 3, sigmas="s", **extra) == "done"
    assert seen["args"] == (1, 2, 3) and seen["kwargs"] == {"sigmas": "s", **extra}
    assert len(seen["run"]) == 1 and RUN_KEY not in Guider.model_options["transformer_options"]

    class DmExecutor:
        class_obj = base.model.diffusion_model

        def __call__(self, *args, **kwargs):
            seen["dm"] = (args, kwargs)
            return "ok"

    to = {"a": 1}
    x = torch.zeros(1, 16, 6, 5)
    args = (x, SIGMA, None, None, None, None, None, to)
    assert diffusion_model_wrapper(DmExecutor(), *args, attention_mask=None, ref_latents_method="index") == "ok"
    passed, kwargs = seen["dm"]
    assert kwargs == {"attention_mask": None, "ref_latents_method": "index"}
    assert passed[7] is not to and passed[7][GRID_KEY] == (3, 3) and passed[7]["a"] == 1 and GRID_KEY not in to


def test_clone_shares_immutable_patch_objects(env):
    base, pm, pp = env
    m1 = apply_pulid_flux(base, pp, T.tiny_embedding())
    first = dict(dit(m1))
    c = m1.clone()
    assert all(dit(c)[k] is v for k, v in first.items())
    p = first[("double_block", 0)]
    assert copy.deepcopy(p) is p
    with pytest.raises(AttributeError):
        p.weight = 2.0
    m2 = apply_pulid_flux(m1, pp, T.tiny_embedding(seed=4))
    assert dict(dit(m1)) == first and all(dit(m1)[k] is v for k, v in first.items())
    assert all(dit(m2)[k].inner is v for k, v in first.items())  # chained, not dropped
    assert p.to(torch.device("cpu")) is p and p.to(torch.float16) is p and p.to(None) is p
    assert p.models() == [p.effect.ca_patcher]
    assert not hasattr(p, "cleanup")


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

    pre = base.clone()
    pre.set_model_patch_replace(Foreign(), "dit", "double_block", 0)
    p = dit(apply_pulid_flux(pre, pp, T.tiny_embedding()))[("double_block", 0)]
    assert p.models() == [p.effect.ca_patcher, "foreign-model"]
    moved = p.to(torch.device("cpu"))
    assert moved is not p and isinstance(moved.inner, Foreign) and moved.inner is not p.inner
    assert ("to", torch.device("cpu")) in calls  # (ComfyUI's ModelPatcher.__del__ may call .to too)
    p.cleanup()
    assert calls[-1] == "cleanup"  # ComfyUI >= 0.17 calls cleanup() on top-level patches only: forwarded
