"""PuLID-Flux through ComfyUI's own patch API: the only module that knows the block-patch contract."""

from __future__ import annotations

import dataclasses
import itertools
import math
import threading
from dataclasses import dataclass, field
from functools import partial

import comfy.model_base
import comfy.model_management as mm
from comfy.patcher_extension import WrappersMP
from torch import Tensor

from ..pulid.fold import PreparedID, prepare_id
from ..pulid.plan import COND, UNCOND, add_id, make_plan, row_entries
from ..pulid.regional import check_mask, check_mask_batch, token_grid, token_weights
from ..pulid.schedule import check_window, is_active, sigma_window
from .cfg import CALL_KEY, add_run_spec
from .guard import check_embedding, check_flux_model, check_pulid, check_weight

UNCOND_MODES = ("uncond_id", "none", "same")
WRAPPER_KEY = "pulid_flux"
_MEMO_SIZE = 32  # plans kept per apply (resolution / batch layout / roles / active state / device)
_keys = itertools.count()
_local = threading.local()  # per thread: the plans of the calls in progress, for blocks called without options


@dataclass(frozen=True, slots=True, eq=False)
class _AppliedID:
    """Everything one apply contributes, shared by its block patches and its wrapper."""

    prepared: PreparedID  # the ID table (folded or reference) and its ModelPatcher
    weight: float
    percents: tuple[float, float]  # (start_percent, end_percent) of the model's noise scale
    start_step: int  # first step index of the sampler run that gets the ID
    uncond_mode: str
    mask: Tensor | None  # (B_m, H, W) float32 CPU
    key: str  # transformer_options key of this apply's plan
    memo: dict = field(default_factory=dict)  # immutable plans and mask weights, shared by threads

    def __deepcopy__(self, memo):
        return self


# --------------------------------------------------------------------------------------- per call
def _memo(applied: _AppliedID, key, make):
    hit = applied.memo.get(key)
    if hit is None:
        if len(applied.memo) >= _MEMO_SIZE:
            applied.memo.clear()  # atomic, unlike evicting one entry while other threads read
        hit = applied.memo[key] = make()
    return hit


def _new_plan(applied: _AppliedID, active: bool, roles: tuple, rows: int, latent, n_ref: int, device):
    if rows % len(roles):
        raise RuntimeError(f"PuLID: {rows} rows do not split into the {len(roles)} cond/uncond chunks")
    batch = rows // len(roles)
    n_cond = applied.prepared.n_cond
    if n_cond not in (1, batch):
        raise ValueError(
            f"the ID embedding holds {n_cond} identities but the latent batch is {batch}: use one identity "
            f"(broadcast to the batch) or exactly one per latent image"
        )
    table = applied.prepared.table
    grid = token_grid(*latent)
    weights = None
    if applied.mask is not None:
        check_mask_batch(applied.mask.shape[0], batch)
        weights = _memo(applied, ("mask", latent, device),
                        lambda: token_weights(applied.mask, grid, device, table.compute_dtype, latent))
    entries = row_entries(roles, batch, n_cond, applied.uncond_mode)
    return make_plan(entries, active, applied.weight, table.entries, table.compute_dtype, device, weights,
                     len(roles), math.prod(grid), n_ref)


@dataclass(frozen=True, slots=True, eq=False)
class _CallPlanner:
    """APPLY_MODEL wrapper: plans this apply's gating for one model call and hands the plan to its blocks."""

    applied: _AppliedID

    def __deepcopy__(self, memo):
        return self

    def __call__(self, executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options=None,
                 **kwargs):
        applied = self.applied
        to = transformer_options if isinstance(transformer_options, dict) else {}
        base = executor.class_obj
        call = to.get(CALL_KEY)  # set by the run wrapper (integration/cfg.py); None outside a sampler run
        sigma = float(t.max()) if call is None else call.sigma
        step = None if call is None else call.step
        active = is_active(sigma, sigma_window(base.model_sampling, *applied.percents), applied.start_step, step)
        chunks = tuple(to.get("cond_or_uncond") or (0,))
        roles = tuple(call.roles[c] if call is not None else (COND if c == 0 else UNCOND) for c in chunks)
        patch = base.diffusion_model.patch_size
        refs = () if isinstance(base, comfy.model_base.Chroma) else (kwargs.get("ref_latents") or ())
        n_ref = sum(math.prod(token_grid(r.shape[-2], r.shape[-1], patch)) for r in refs)  # in Flux's sequence
        latent = (x.shape[-2], x.shape[-1], patch)
        plan = _memo(applied, (active, roles, x.shape[0], latent, n_ref, x.device),
                     lambda: _new_plan(applied, active, roles, x.shape[0], latent, n_ref, x.device))
        previous = getattr(_local, applied.key, None)
        setattr(_local, applied.key, plan)
        try:
            return executor(x, t, c_concat, c_crossattn, control, {**to, applied.key: plan}, **kwargs)
        finally:
            setattr(_local, applied.key, previous)


# --------------------------------------------------------------------------------------- the ID term
def _with_id(applied: _AppliedID, ca_index: int, x: Tensor, single: bool, to) -> Tensor:
    """x with weight * CA(id, main-image tokens) added out of place (x itself when no row gets the ID)."""
    plan = to.get(applied.key) if isinstance(to, dict) and applied.key in to else getattr(_local, applied.key, None)
    if plan is None or plan.gate.shape[0] != x.shape[0]:
        raise RuntimeError(
            "PuLID block patch called outside a model call it planned (the PuLID apply_model wrapper did not run "
            f"for these {x.shape[0]} rows); call the model through ComfyUI's apply_model"
        )
    table = applied.prepared.table
    cast = None
    if table.weight_device != x.device:  # left on (or moved back to) another device: cast, as comfy.ops does
        cast = partial(mm.cast_to, non_blocking=mm.device_supports_non_blocking(x.device))
    return add_id(plan, x, single, lambda img, select: table.residual(ca_index, img, select, cast))


# --------------------------------------------------------------------------------------- patch objects
@dataclass(frozen=True, slots=True, eq=False)
class _BlockPatch:
    """Callable stored under patches_replace["dit"]; wraps whatever patch was there before."""

    applied: _AppliedID
    ca_index: int
    single: bool  # a single-stream block (text, image, reference tokens in one sequence)
    inner: object = None  # the replaced patch of another apply or pack, or None

    def __deepcopy__(self, memo):
        return self

    def __call__(self, args: dict, extra: dict) -> dict:
        # args is passed on as received: any key ComfyUI or another pack adds keeps flowing
        out = self.inner(args, extra) if self.inner is not None else extra["original_block"](args)
        img = _with_id(self.applied, self.ca_index, out["img"], self.single, args.get("transformer_options"))
        return out if img is out["img"] else {**out, "img": img}

    def models(self) -> list:
        """ComfyUI loads these with the diffusion model: our ID table plus whatever the wrapped patch needs."""
        inner = self.inner.models() if hasattr(self.inner, "models") else []
        return [self.applied.prepared.patcher, *inner]

    def to(self, *args, **kwargs):
        """Nothing of ours to move (ComfyUI moves the table's ModelPatcher); forwarded to a wrapped patch."""
        if hasattr(self.inner, "to"):
            inner = self.inner.to(*args, **kwargs)
            if inner is not self.inner:
                return dataclasses.replace(self, inner=inner)
        return self

    def cleanup(self, *args, **kwargs):
        """ComfyUI's post-sampling hook: forwarded to the wrapped patch, nothing to do for ours."""
        if hasattr(self.inner, "cleanup"):
            return self.inner.cleanup(*args, **kwargs)
        return None


# --------------------------------------------------------------------------------------- entry point
def apply_pulid_flux(model, pulid, identity, *, weight=1.0, start_percent=0.0, end_percent=1.0, start_step=0,
                     uncond_mode="uncond_id", mask=None, folded=None, cfg_start_step=0):
    """Return a clone of the Flux / Chroma MODEL `model` with the PuLID ID cross-attention (never mutates it)."""
    weight = check_weight(weight)
    if weight == 0.0:
        return model
    start, end, start_step = check_window(start_percent, end_percent, start_step)
    if uncond_mode not in UNCOND_MODES:
        raise ValueError(f"uncond_mode={uncond_mode!r} must be one of {UNCOND_MODES}")
    pulid_model = check_pulid(pulid)
    layout = check_flux_model(model, pulid_model, getattr(pulid, "name", "the PuLID model"))
    tokens, uncond = check_embedding(identity, pulid_model, uncond_mode)
    prepared = prepare_id(pulid, tokens, uncond if uncond_mode == "uncond_id" else None, folded=folded,
                          device=model.load_device)
    mask = check_mask(mask)
    applied = _AppliedID(prepared=prepared, weight=weight, percents=(start, end), start_step=start_step,
                         uncond_mode=uncond_mode, mask=mask, key=f"{WRAPPER_KEY}.{next(_keys)}")
    m = model.clone()
    existing = m.model_options["transformer_options"].get("patches_replace", {}).get("dit", {})
    for name, placement, single in (("double_block", layout.double, False), ("single_block", layout.single, True)):
        for block, ca_index in placement.items():
            patch = _BlockPatch(applied, ca_index, single, existing.get((name, block)))
            m.set_model_patch_replace(patch, "dit", name, block)
    m.add_wrapper_with_key(WrappersMP.APPLY_MODEL, WRAPPER_KEY, _CallPlanner(applied))
    return add_run_spec(m, (start, end), start_step, cfg_start_step)
