"""PuLID with third-party step caches: welltop-cn's TeaCache and chengzeyi's WaveSpeed First Block Cache.

Their real node classes are imported from the archives in $PULID_THIRDPARTY_DIR (tests/_compat.py). Both
replace Flux's forward_orig with their own, which calls the dit block replacements without
`transformer_options` in the block args (TeaCache passes none at all; WaveSpeed passes it in the second
argument only).

* ComfyUI 0.3.64, where both work alone: with PuLID in both orders the graph samples, PuLID has an effect,
  weight 0 and an inactive window are bit-identical to the graph without PuLID, nothing is left behind, and
  with the cache skipping steps every computed step still gets the ID.
* ComfyUI 0.33, where both fail by themselves (TeaCache cannot be imported, WaveSpeed's forward_orig rejects
  Flux's new `timestep_zero_index` argument): with PuLID they fail the same way, and nothing is left behind.
"""

from __future__ import annotations

import pytest
import torch
from conftest import COMFYUI_ROOT, NO_COMFYUI, setup_comfyui

if COMFYUI_ROOT is None:
    pytest.skip(NO_COMFYUI, allow_module_level=True)
setup_comfyui()

import _compat as C  # noqa: E402
import _tiny_flux as T  # noqa: E402

from comfyui_pulid_flux.pulid.config import ca_layout  # noqa: E402

ORDERS = ["pulid_first", "pulid_last"]
STEPS = 8
# Both packs work alone on 0.3.64 and fail alone on 0.33 (see the module docstring).
WORKS_ALONE = C.comfy_version() < (0, 4)
needs_working_pack = pytest.mark.skipif(not WORKS_ALONE, reason="the pack fails by itself on this ComfyUI")
needs_broken_pack = pytest.mark.skipif(WORKS_ALONE, reason="the pack works by itself on this ComfyUI")


base, kit = C.base, C.kit  # the shared module-scoped fixtures (tests/_compat.py)


def teacache(threshold: float = 0.4):
    nodes = C.import_pack("teacache", "nodes")  # its __init__ also imports the diffusers-only nodes

    def step(model):
        return C.run_node(nodes.TeaCache, model=model, model_type="flux", rel_l1_thresh=threshold,
                          start_percent=0.0, end_percent=1.0, cache_device="cpu")[0]

    return step


def fbcache(threshold: float = 0.3):
    pack = C.import_pack("wavespeed")

    def step(model):
        return C.run_node(pack.NODE_CLASS_MAPPINGS["ApplyFBCacheOnModel"], model=model,
                          object_to_patch="diffusion_model", residual_diff_threshold=threshold, start=0.0, end=1.0,
                          max_consecutive_cache_hits=-1)[0]

    return step


CACHES = {"teacache": teacache, "fbcache": fbcache}


def chain(model, pulid, cache, order: str):
    if pulid is not None and order == "pulid_first":
        model = pulid(model)
    model = cache(model)
    if pulid is not None and order == "pulid_last":
        model = pulid(model)
    return model


def counted(model, log: list, block: int = 1):
    """A clone with a counting replacement on double block `block` (no PuLID CA there): every call is one
    forward in which the cache computed the blocks after the first."""
    m = model.clone()
    dit = m.model_options["transformer_options"].get("patches_replace", {}).get("dit", {})
    inner = dit.get(("double_block", block))
    assert inner is None, "the counting block must not be one PuLID patches"

    def count(args, extra):
        log.append(block)
        return extra["original_block"](args)

    m.set_model_patch_replace(count, "dit", "double_block", block)
    return m


# --------------------------------------------------------------------------------------- 0.3.64
@needs_working_pack
@pytest.mark.parametrize("cache", list(CACHES))
def test_cache_alone_skips_steps(base, cache):
    computed = []
    out = T.sample(counted(CACHES[cache]()(base), computed), steps=STEPS)
    assert torch.isfinite(out).all()
    assert 0 < len(computed) < STEPS, f"{cache} computed {len(computed)} of {STEPS} steps: nothing is cached"
    assert not torch.equal(out, T.sample(base, steps=STEPS))


@needs_working_pack
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("cache", list(CACHES))
def test_cache_with_pulid(base, kit, cache, order):
    step = CACHES[cache]()
    C.check_combination(lambda pulid: T.sample(chain(base, pulid, step, order), steps=STEPS), kit)


@needs_working_pack
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("cache", list(CACHES))
def test_every_computed_step_gets_the_id(base, kit, cache, order):
    computed = []
    model = counted(chain(base, C.pulid_step(kit), CACHES[cache](), order), computed)
    kit.log.clear()
    T.sample(model, steps=STEPS)
    assert 0 < len(computed) < STEPS, f"{cache} skipped no step with PuLID: test too weak"
    params = base.model.diffusion_model.params
    single0 = ca_layout(params.depth, params.depth_single_blocks).single[0]  # the CA after single block 0
    per_ca = {i: len(kit.attends(i)) for i in range(kit.pulid_model.num_ca)}
    assert per_ca[single0] == len(computed), (per_ca, len(computed))
    assert all(n >= len(computed) for n in per_ca.values()), per_ca  # double 0 may run on cached steps too


@needs_working_pack
@pytest.mark.parametrize("cache", list(CACHES))
def test_cache_off_equals_no_cache(base, kit, cache):
    """Threshold 0 turns either cache off (the node returns its input): the PuLID graph equals the one
    without the cache node, so the ID's effect under the cache is the ID's effect, not the cache's."""
    step = CACHES[cache](threshold=0.0)
    for order in ORDERS:
        out = T.sample(chain(base, C.pulid_step(kit), step, order), steps=STEPS)
        assert torch.equal(out, T.sample(C.apply_id(base, kit), steps=STEPS)), order


# --------------------------------------------------------------------------------------- 0.33
@needs_broken_pack
def test_teacache_fails_alone_and_pulid_is_unaffected(base, kit):
    with pytest.raises(ImportError) as alone:
        teacache()
    assert "comfy" in str(alone.value)  # ComfyUI moved a function TeaCache imports (comfy.ldm.*): its bug
    with pytest.raises(ImportError) as again:  # importing it again (our pack loaded, PuLID applied) fails the same way
        C.apply_id(base, kit)
        teacache()
    assert str(again.value) == str(alone.value)
    fresh = T.sample(base, steps=3)
    out = T.sample(C.apply_id(base, kit), steps=3)  # PuLID itself keeps working
    assert torch.isfinite(out).all() and not torch.equal(out, fresh)


def _failure(fn) -> tuple[type, str]:
    with pytest.raises(Exception) as info:
        fn()
    return type(info.value), str(info.value)


@needs_broken_pack
@pytest.mark.parametrize("order", ORDERS)
def test_fbcache_fails_the_same_way_with_pulid(base, kit, order):
    fresh = T.sample(base, steps=3)
    step = fbcache()
    alone = _failure(lambda: T.sample(step(base), steps=3))
    with_pulid = _failure(lambda: T.sample(chain(base, C.pulid_step(kit), step, order), steps=3))
    assert with_pulid == alone, (with_pulid, alone)
    assert torch.equal(T.sample(base, steps=3), fresh), "the failed graph left something behind"
