"""PuLID-Flux through ComfyUI's own patch API: the only module that knows the patch contract.

Contract used (the same in ComfyUI 0.3.64 and 0.33):
* `transformer_options["patches_replace"]["dit"][("double_block", i)](args, extra) -> {"img", "txt", ...}`
  and `[("single_block", i)](args, extra) -> {"img", ...}`; `extra["original_block"](args)` runs the real
  block. A double block's `img` is the main-image tokens, then Kontext reference tokens; a single block's
  sequence is text, main image, references. Third-party forwards (step caches) call these replacements
  without `transformer_options` in `args`, so the patches never read it.
* The APPLY_MODEL wrapper runs once per model call, outside a `torch.compile`d diffusion model, with the
  latent `x`, the sigma `t`, the text `c_crossattn`, the call's `transformer_options` (`cond_or_uncond`:
  rows [k*B:(k+1)*B] belong to chunk k, 0 = positive; `sample_sigmas`: the run's schedule) and the extra
  conds (`ref_latents`). `executor.class_obj` is the model_base object, holding the model_sampling in force.

Placement is the official one: after double blocks 0, 2, 4, ... and single blocks 0, 4, 8, ...
(`config.ca_layout`), `img = img + weight * CA(id, img)` on the main-image tokens only.

State: everything an apply holds is immutable and shared by clones (`__deepcopy__` returns self), except
one `_CallSlot` holder per apply: the APPLY_MODEL wrapper decides the gating of the call (sigma window, start
step, which rows get the cond or uncond ID, mask) and leaves it there as tensors; the block patches only do
tensor work with it. Under `torch.compile` every row is computed and the gate tensor zeroes the rows without
ID, so a run at one resolution traces once whatever the step; in eager mode rows without ID cost nothing.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from comfy.patcher_extension import WrappersMP
from torch import Tensor

from ..pulid.fold import PreparedID, prepare_id
from ..pulid.regional import check_mask, check_mask_batch, grid_tokens, token_grid, token_weights
from ..pulid.schedule import check_window, is_active, sigma_window
from .guard import check_embedding, check_flux_model, check_pulid, check_weight

UNCOND_MODES = ("uncond_id", "none", "same")
WRAPPER_KEY = "pulid_flux"
_MEMO_SIZE = 16  # plans kept per apply (one per resolution / batch layout / active state)


@dataclass(frozen=True, slots=True)
class _CallPlan:
    """What every block of one model call does for one apply."""

    id_span: tuple[int, int] | None  # eager: the rows [r0, r1) holding every row with an ID (None: no row has one)
    select: Tensor | None  # (rows,) ID entry per row; None: entry 0 for all rows
    gate: Tensor  # (rows, 1 or n_img, 1): weight x active x mask; 0 on rows without ID
    n_img: int  # main-image tokens
    n_ref: int  # Kontext reference tokens after them


class _CallSlot:
    """The one mutable object of an apply: the plan of the model call in progress, for its block patches."""

    __slots__ = ("plan", "memo")

    def __init__(self):
        self.plan: _CallPlan | None = None
        self.memo: dict = {}

    def __deepcopy__(self, memo):
        return self


@dataclass(frozen=True, slots=True, eq=False)
class _AppliedID:
    """Everything one apply contributes, shared by its block patches and its wrapper."""

    prepared: PreparedID  # the ID table (folded or reference) and its ModelPatcher
    weight: float
    percents: tuple[float, float]  # (start_percent, end_percent) of the model's noise scale
    start_step: int  # first step index of the sampler run that gets the ID
    uncond_mode: str
    mask: Tensor | None  # (B_m, H, W) float32 CPU
    call_slot: _CallSlot

    def __deepcopy__(self, memo):
        return self


# --------------------------------------------------------------------------------------- per call
def _row_entry(applied: _AppliedID, chunk: int, item: int) -> int | None:
    """The ID entry of one latent row, None for no ID."""
    which = "cond" if chunk == 0 else {"uncond_id": "uncond", "same": "cond", "none": None}[applied.uncond_mode]
    if which is None:
        return None
    if which == "uncond":
        return applied.prepared.n_cond
    return item if applied.prepared.n_cond > 1 else 0


def _mask_weights(applied: _AppliedID, grid, latent, device) -> Tensor:
    """(B_m, n_img, 1) token weights of the apply's mask, once per latent size."""
    key = ("mask", grid, latent, device)
    hit = applied.call_slot.memo.get(key)
    if hit is None:
        hit = token_weights(applied.mask, grid, device, applied.prepared.table.compute_dtype, latent)
        applied.call_slot.memo[key] = hit
    return hit


def _new_plan(applied: _AppliedID, active: bool, chunks: tuple, rows: int, grid, latent, n_ref: int, device) -> _CallPlan:
    if rows % len(chunks):
        raise RuntimeError(f"PuLID: {rows} rows do not split into the {len(chunks)} cond/uncond chunks {chunks}")
    batch = rows // len(chunks)
    n_cond = applied.prepared.n_cond
    if n_cond not in (1, batch):
        raise ValueError(
            f"the ID embedding holds {n_cond} identities but the latent batch is {batch}: use one identity "
            f"(broadcast to the batch) or exactly one per latent image"
        )
    entries = [_row_entry(applied, c, b) for c in chunks for b in range(batch)]
    on = [i for i, e in enumerate(entries) if active and e is not None]
    table = applied.prepared.table
    select = None
    if table.entries > 1:
        select = torch.tensor([e or 0 for e in entries], dtype=torch.long, device=device)
    gate = torch.tensor([applied.weight if i in on else 0.0 for i in range(rows)], dtype=table.compute_dtype, device=device)
    gate = gate.view(rows, 1, 1)
    if applied.mask is not None:
        check_mask_batch(applied.mask.shape[0], batch)
        weights = _mask_weights(applied, grid, latent, device)
        gate = gate * (weights.repeat(len(chunks), 1, 1) if weights.shape[0] > 1 else weights)
    span = (on[0], on[-1] + 1) if on else None
    return _CallPlan(id_span=span, select=select, gate=gate, n_img=grid_tokens(grid), n_ref=n_ref)


@dataclass(frozen=True, slots=True, eq=False)
class _CallPlanner:
    """APPLY_MODEL wrapper: decides this apply's gating for one model call and leaves it for the blocks."""

    applied: _AppliedID

    def __deepcopy__(self, memo):
        return self

    def __call__(self, executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options=None,
                 **kwargs):
        applied, call_slot = self.applied, self.applied.call_slot
        to = transformer_options if isinstance(transformer_options, dict) else {}
        dm = executor.class_obj.diffusion_model
        patch = dm.patch_size
        window = sigma_window(executor.class_obj.model_sampling, *applied.percents)
        schedule = to.get("sample_sigmas")
        schedule = schedule.tolist() if isinstance(schedule, Tensor) else schedule
        active = is_active(float(t.max()), window, applied.start_step, schedule)
        chunks = tuple(to.get("cond_or_uncond") or (0,))
        grid = token_grid(x.shape[-2], x.shape[-1], patch)
        refs = kwargs.get("ref_latents") or ()
        n_ref = sum(math.prod(token_grid(r.shape[-2], r.shape[-1], patch)) for r in refs)
        key = (active, chunks, x.shape[0], x.shape[-2:], n_ref, x.device)
        plan = call_slot.memo.get(key)
        if plan is None:
            plan = _new_plan(applied, active, chunks, x.shape[0], grid, (x.shape[-2], x.shape[-1], patch), n_ref,
                             x.device)
            if len(call_slot.memo) >= _MEMO_SIZE:
                call_slot.memo.pop(next(iter(call_slot.memo)))
            call_slot.memo[key] = plan
        previous, call_slot.plan = call_slot.plan, plan
        try:
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        finally:
            call_slot.plan = previous


# --------------------------------------------------------------------------------------- the ID term
def _with_id(applied: _AppliedID, ca_index: int, x: Tensor, single: bool) -> Tensor:
    """x with weight * CA(id, main-image tokens) added out of place (x itself when no row gets the ID)."""
    plan = applied.call_slot.plan
    if plan is None or plan.gate.shape[0] != x.shape[0]:
        raise RuntimeError(
            "PuLID block patch called outside a model call it planned (the PuLID apply_model wrapper did not run "
            f"for these {x.shape[0]} rows); call the model through ComfyUI's apply_model"
        )
    table = applied.prepared.table
    if torch.compiler.is_compiling():  # one graph for the whole run: the gate zeroes rows without ID
        r0, r1 = 0, x.shape[0]
    elif plan.id_span is None:
        return x
    else:
        r0, r1 = plan.id_span
        if table.weight_device != x.device:
            raise RuntimeError(
                f"the PuLID ID table is on {table.weight_device} but the Flux hidden states on {x.device}; load the PuLID "
                f"model with the loader node (it hands ComfyUI a ModelPatcher that moves it with the model)"
            )
    n = plan.n_img
    t0 = x.shape[1] - plan.n_ref - n if single else 0
    if t0 < 0 or t0 + n > x.shape[1]:
        raise RuntimeError(f"PuLID: {n} image + {plan.n_ref} reference tokens exceed the sequence of {x.shape[1]}")
    select = None if plan.select is None else plan.select[r0:r1]
    res = table.residual(ca_index, x[r0:r1, t0:t0 + n], select)  # (r1-r0, n, dim)
    delta = (res * plan.gate[r0:r1]).to(x.dtype)
    if r1 - r0 == x.shape[0] and n == x.shape[1]:
        return x + delta  # out of place: newer blocks add into img in place
    out = x.clone()
    out[r0:r1, t0:t0 + n] += delta
    return out


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
        img = _with_id(self.applied, self.ca_index, out["img"], self.single)
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
                     uncond_mode="uncond_id", mask=None, folded=None):
    """Return a clone of the Flux / Chroma MODEL `model` with the PuLID ID cross-attention (never mutates it).

    pulid: the PulidFlux handle (`.model`, `.wrap`, `.name`). identity: an IDEmbedding (tokens (N, T, id_dim),
    uncond (1, T, id_dim)). uncond_mode: what the negative (CFG > 1) rows
    get: 'uncond_id' (official), 'none' or 'same'. mask: optional MASK (B, H, W) / (H, W) limiting the ID to a
    region. folded: None picks the cheaper form (pulid.fold.choose_folded); True / False force folded / unfolded.
    weight == 0 returns `model` itself, whatever the other inputs (a weight-0 apply is a bypass, as in the node).
    """
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
                     uncond_mode=uncond_mode, mask=mask, call_slot=_CallSlot())
    m = model.clone()
    existing = m.model_options["transformer_options"].get("patches_replace", {}).get("dit", {})
    for name, placement, single in (("double_block", layout.double, False), ("single_block", layout.single, True)):
        for block, ca_index in placement.items():
            patch = _BlockPatch(applied, ca_index, single, existing.get((name, block)))
            m.set_model_patch_replace(patch, "dit", name, block)
    m.add_wrapper_with_key(WrappersMP.APPLY_MODEL, WRAPPER_KEY, _CallPlanner(applied))
    return m
