"""PuLID-Flux through ComfyUI's own patch API: the only module that knows the patch contract.

Contract used (identical in ComfyUI 0.3.64 and 0.33, docs/comfyui.md §1, comfyui-newer.md §1-2):
* `transformer_options["patches_replace"]["dit"][("double_block", i)](args, extra) -> {"img", "txt"}` and
  `[("single_block", i)](args, extra) -> {"img"}`; `extra["original_block"](args)` runs the real block.
  The single-block sequence is text, then main-image tokens, then Kontext reference tokens.
* Per call: `sigmas` (current sigma, latent batch), `cond_or_uncond` (rows [k*B:(k+1)*B] belong to chunk
  k; 0 = positive), `sample_sigmas` (the whole schedule), `img_slice` (0.14+), `reference_image_num_tokens`.
* Wrappers: OUTER_SAMPLE (once per sampling run; `executor.class_obj` is the CFGGuider, whose
  `model_options` is that run's private copy) and DIFFUSION_MODEL (once per forward; `class_obj` is Flux).

Placement is the official one (spec c.3): after double blocks 0, 2, 4, ... and single blocks 0, 4, 8, ...
(`config.ca_layout`), `img = img + weight * CA(id, img)` on the image tokens only.

State: patch objects are immutable and shared between clones (`__deepcopy__` returns self). Per-run state
(sigma window from the model_sampling in force, K/V of the ID tokens) lives in the run's transformer_options
under RUN_KEY; per-forward facts (token grid, text length, the row plan) live in that forward's dict.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .guard import check_embedding, check_flux_model, check_weight
from .model import PulidFluxModel
from .regional import check_mask, check_mask_batch, grid_tokens, token_grid, token_weights
from .schedule import check_window, is_active, sigma_window

UNCOND_MODES = ("uncond_id", "none", "same")
# transformer_options keys owned by this pack
RUN_KEY = "pulid_flux_run"  # {apply_id: _Run}, set for one sampling run by the OUTER_SAMPLE wrapper
GRID_KEY = "pulid_flux_grid"  # (h, w) main-image token grid of one forward, set by the DIFFUSION_MODEL wrapper
LATENT_KEY = "pulid_flux_latent"  # (h, w, patch) of that forward's latent (odd sides are padded by Flux)
TXT_KEY = "pulid_flux_txt_len"  # text length recorded by the double-block patch (ComfyUI < 0.14 has no img_slice)
CONTEXT_KEY = "pulid_flux_context_len"  # text tokens entering Flux: fallback when none of our double patches ran
CALL_KEY = "pulid_flux_call"  # {apply_id: _Plan} memo for one forward
WRAPPER_KEY = "pulid_flux"
# comfy.patcher_extension.WrappersMP values (stable since 0.3.x; this package never imports ComfyUI)
OUTER_SAMPLE = "outer_sample"
DIFFUSION_MODEL = "diffusion_model"


# --------------------------------------------------------------------------------------- state
@dataclass(frozen=True, eq=False)
class _Effect:
    """Everything one apply contributes. Immutable; shared by all its patch objects and wrappers."""

    apply_id: str
    ca_patcher: object  # ModelPatcher over PulidFluxModel.pulid_ca
    tokens: Tensor  # (N, T, id_dim) cond ID
    uncond: Tensor | None  # (1, T_u, id_dim) IDFormer on zeros
    weight: float
    percents: tuple[float, float]
    start_step: int
    uncond_mode: str
    mask: Tensor | None  # (B_m, H, W) float32 CPU
    fallback_window: tuple[float, float]  # from the model_sampling at apply time (no OUTER_SAMPLE run)

    def __deepcopy__(self, memo):
        return self


class _Run:
    """One sampling run of one apply: its sigma window and caches (device, dtype keyed; run-local)."""

    def __init__(self, window: tuple[float, float]):
        self.window = window
        self.kv: dict = {}


@dataclass(eq=False)
class _Plan:
    """What one forward does for one apply: row groups that get an ID, image token range, mask."""

    key: tuple
    groups: tuple  # ((row0, row1, "cond" | "uncond"), ...)
    n_img: int | None  # main-image tokens (None: everything after the text)
    mask: Tensor | None  # (rows or 1, n_img, 1)
    kv: dict = field(default_factory=dict)  # used when no run state exists


def _run_of(effect: _Effect, to: dict) -> _Run | None:
    runs = to.get(RUN_KEY)
    return runs.get(effect.apply_id) if isinstance(runs, dict) else None


def _plan(effect: _Effect, to: dict, x: Tensor, t0: int) -> _Plan | None:
    """The row plan of this forward (memoised in the forward's dict), or None if the ID is off."""
    sigmas, rows, grid = to.get("sigmas"), x.shape[0], to.get(GRID_KEY)
    memo = to.get(CALL_KEY)
    if isinstance(memo, dict):
        hit = memo.get(effect.apply_id)
        if hit is not None and hit.key[0] is sigmas and hit.key[1:] == (rows, grid):
            return hit if hit.groups else None
    plan = _new_plan(effect, to, x, t0, sigmas, rows, grid)
    to[CALL_KEY] = {**(memo if isinstance(memo, dict) else {}), effect.apply_id: plan}
    return plan if plan.groups else None


def _new_plan(effect: _Effect, to: dict, x: Tensor, t0: int, sigmas, rows: int, grid) -> _Plan:
    key = (sigmas, rows, grid)
    run = _run_of(effect, to)
    sigma = float(sigmas.max()) if isinstance(sigmas, Tensor) and sigmas.numel() else None
    sample_sigmas = to.get("sample_sigmas")
    schedule = sample_sigmas.tolist() if isinstance(sample_sigmas, Tensor) else sample_sigmas
    window = run.window if run is not None else effect.fallback_window
    if not is_active(sigma, window, effect.start_step, schedule):
        return _Plan(key, (), None, None)
    chunks = list(to.get("cond_or_uncond") or [0])
    if rows % len(chunks):
        raise RuntimeError(f"PuLID: {rows} rows do not split into the {len(chunks)} cond/uncond chunks {chunks}")
    batch = rows // len(chunks)
    n_id = effect.tokens.shape[0]
    if n_id not in (1, batch):
        raise ValueError(
            f"the ID embedding holds {n_id} identities but the latent batch is {batch}: use one identity "
            f"(broadcast to the batch) or exactly one per latent image"
        )
    groups: list[list] = []
    for k, c in enumerate(chunks):
        which = "cond" if c == 0 else {"uncond_id": "uncond", "same": "cond", "none": None}[effect.uncond_mode]
        if which is None:
            continue
        if groups and groups[-1][1] == k * batch and groups[-1][2] == which:
            groups[-1][1] = (k + 1) * batch
        else:
            groups.append([k * batch, (k + 1) * batch, which])
    n_img = grid_tokens(grid)
    if n_img is None:
        refs = to.get("reference_image_num_tokens") or []
        n_img = x.shape[1] - t0 - sum(refs) if refs and x.shape[1] - t0 - sum(refs) > 0 else None
    mask = None
    if effect.mask is not None and groups:
        if grid is None:
            raise RuntimeError("PuLID mask: the image token grid is unknown (the PuLID diffusion-model wrapper did not run)")
        check_mask_batch(effect.mask.shape[0], batch)
        cache, mkey = (run.kv if run is not None else {}), ("mask", grid, to.get(LATENT_KEY), x.device, x.dtype)
        if mkey not in cache:  # once per run and latent size
            cache[mkey] = token_weights(effect.mask, grid, x.device, x.dtype, to.get(LATENT_KEY))  # (B_m, n_img, 1)
        mask = cache[mkey]
        if mask.shape[0] > 1:
            mask = mask.repeat(len(chunks), 1, 1)  # (rows, n_img, 1)
    return _Plan(key, tuple(tuple(g) for g in groups), n_img, mask)


# --------------------------------------------------------------------------------------- the ID term
def _compute_dtype(ca, x: Tensor) -> torch.dtype:
    """ComfyUI cast-ops modules compute in the input dtype; plain modules in their weight dtype."""
    lin = ca.to_q
    if getattr(lin, "comfy_cast_weights", False):
        return x.dtype
    w = lin.weight
    if w.device != x.device:
        raise RuntimeError(
            f"PuLID cross-attention weights are on {w.device} but the Flux hidden states on {x.device}; load the "
            f"PuLID model as a ComfyUI ModelPatcher (the loader node does) or build it with comfy.ops.manual_cast"
        )
    return w.dtype if w.dtype in (torch.float32, torch.float16, torch.bfloat16) else x.dtype


def _kv(effect: _Effect, cache: dict, ca_index: int, which: str, device, dtype) -> tuple[Tensor, Tensor]:
    key = (ca_index, which, device, dtype)
    hit = cache.get(key)
    if hit is None:
        ids = effect.tokens if which == "cond" else effect.uncond
        ca = effect.ca_patcher.model[ca_index]
        hit = ca.project_id(ids.to(device=device, dtype=dtype))  # (N, H, T, dh) x 2
        cache[key] = hit
    return hit


def _inject(effect: _Effect, ca_index: int, to: dict, x: Tensor, t0: int) -> Tensor:
    """x with weight * CA(id, image tokens) added out of place; image tokens are x[:, t0:t0+n_img]."""
    plan = _plan(effect, to, x, t0)
    if plan is None:
        return x
    n = plan.n_img if plan.n_img is not None else x.shape[1] - t0
    if t0 + n > x.shape[1]:
        raise RuntimeError(f"PuLID: {n} image tokens after {t0} text tokens exceed the sequence of {x.shape[1]}")
    run = _run_of(effect, to)
    cache = run.kv if run is not None else plan.kv
    ca = effect.ca_patcher.model[ca_index]
    cdt = _compute_dtype(ca, x)
    out = None
    for r0, r1, which in plan.groups:
        k, v = _kv(effect, cache, ca_index, which, x.device, cdt)
        if k.shape[0] > 1 and k.shape[0] != r1 - r0:  # per-item identities over several chunks
            k, v = k.repeat((r1 - r0) // k.shape[0], 1, 1, 1), v.repeat((r1 - r0) // v.shape[0], 1, 1, 1)
        res = ca.attend(x[r0:r1, t0:t0 + n].to(cdt), k, v).to(x.dtype)  # (r1-r0, n, D)
        if plan.mask is not None:
            res = res * (plan.mask if plan.mask.shape[0] == 1 else plan.mask[r0:r1])
        if r1 - r0 == x.shape[0] and t0 == 0 and n == x.shape[1]:
            return torch.add(x, res, alpha=effect.weight)  # out of place: 0.3.69+ blocks add into img in place
        if out is None:
            out = x.clone()
        out[r0:r1, t0:t0 + n].add_(res, alpha=effect.weight)
    return x if out is None else out


# --------------------------------------------------------------------------------------- patch objects
class _BlockPatch:
    """Callable stored under patches_replace["dit"]; immutable, wraps any patch that was there before."""

    __slots__ = ("effect", "ca_index", "inner")

    def __init__(self, effect: _Effect, ca_index: int, inner=None):
        object.__setattr__(self, "effect", effect)
        object.__setattr__(self, "ca_index", ca_index)
        object.__setattr__(self, "inner", inner)

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __deepcopy__(self, memo):
        return self

    def _run_inner(self, args: dict, extra: dict) -> dict:
        # The received args dict is passed on as is (never rebuilt): any key ComfyUI adds keeps flowing.
        return self.inner(args, extra) if self.inner is not None else extra["original_block"](args)

    def models(self) -> list:
        """ComfyUI loads these with the diffusion model: our CAs plus whatever the wrapped patch needs."""
        inner = self.inner.models() if hasattr(self.inner, "models") else []
        return [self.effect.ca_patcher, *inner]

    def to(self, *args, **kwargs):
        """Nothing of ours to move (ComfyUI moves the CA ModelPatcher); forwarded to a wrapped patch."""
        if hasattr(self.inner, "to"):
            inner = self.inner.to(*args, **kwargs)
            if inner is not self.inner:
                return _make(type(self), self.effect, self.ca_index, inner)
        return self


class _DoublePatch(_BlockPatch):
    __slots__ = ()

    def __call__(self, args: dict, extra: dict) -> dict:
        out = self._run_inner(args, extra)
        to = args.get("transformer_options")
        to = to if isinstance(to, dict) else {}
        if "img_slice" not in to:
            to[TXT_KEY] = out["txt"].shape[1]  # per-forward dict: the single blocks read it
        img = _inject(self.effect, self.ca_index, to, out["img"], 0)
        return out if img is out["img"] else {"img": img, "txt": out["txt"]}


class _SinglePatch(_BlockPatch):
    __slots__ = ()

    def __call__(self, args: dict, extra: dict) -> dict:
        out = self._run_inner(args, extra)
        to = args.get("transformer_options")
        to = to if isinstance(to, dict) else {}
        img_slice = to.get("img_slice")
        # no img_slice (< 0.14): what our double patches saw, else (all of them replaced, e.g. by core
        # SkipLayerGuidanceDiT skipping those blocks) the text length that entered Flux
        n_txt = img_slice[0] if img_slice else to.get(TXT_KEY, to.get(CONTEXT_KEY))
        if n_txt is None:
            raise RuntimeError("PuLID single-block patch: text length unknown (no img_slice, no double-block record)")
        x = _inject(self.effect, self.ca_index, to, out["img"], int(n_txt))
        return out if x is out["img"] else {"img": x}


class _ForwardCleanup:
    """Mixed in only when the wrapped patch has ComfyUI's post-sampling `cleanup` hook (0.17+): forward it."""

    __slots__ = ()

    def cleanup(self, *args, **kwargs):
        return self.inner.cleanup(*args, **kwargs)


class _DoublePatchC(_ForwardCleanup, _DoublePatch):
    __slots__ = ()


class _SinglePatchC(_ForwardCleanup, _SinglePatch):
    __slots__ = ()


def _make(kind: type, effect: _Effect, ca_index: int, inner):
    double = issubclass(kind, _DoublePatch)
    if hasattr(inner, "cleanup"):
        return (_DoublePatchC if double else _SinglePatchC)(effect, ca_index, inner)
    return (_DoublePatch if double else _SinglePatch)(effect, ca_index, inner)


# --------------------------------------------------------------------------------------- wrappers
class _OuterSample:
    """OUTER_SAMPLE wrapper: opens this apply's run state in the run's private transformer_options."""

    __slots__ = ("effect",)

    def __init__(self, effect: _Effect):
        object.__setattr__(self, "effect", effect)

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __deepcopy__(self, memo):
        return self

    def __call__(self, executor, *args, **kwargs):
        guider = executor.class_obj
        options, patcher = getattr(guider, "model_options", None), getattr(guider, "model_patcher", None)
        if not isinstance(options, dict) or patcher is None:  # not a CFGGuider: apply-time window, no cache
            return executor(*args, **kwargs)
        to = options.setdefault("transformer_options", {})
        ms = patcher.get_model_object("model_sampling")
        prev = to.get(RUN_KEY)
        to[RUN_KEY] = {**(prev if isinstance(prev, dict) else {}),
                       self.effect.apply_id: _Run(sigma_window(ms, *self.effect.percents))}
        try:
            return executor(*args, **kwargs)
        finally:
            if prev is None:
                to.pop(RUN_KEY, None)
            else:
                to[RUN_KEY] = prev


def diffusion_model_wrapper(executor, *args, **kwargs):
    """DIFFUSION_MODEL wrapper: passes on a copy of transformer_options carrying this call's token grid."""
    x = args[0] if args else kwargs.get("x")
    context = args[2] if len(args) > 2 else kwargs.get("context")  # (B, n_txt, C)
    n_ctx = context.shape[1] if isinstance(context, Tensor) and context.ndim == 3 else None
    if len(args) > 7:
        to = args[7]
    else:
        to = kwargs.get("transformer_options")
    if isinstance(x, Tensor) and x.ndim == 4 and isinstance(to, dict):
        patch = getattr(executor.class_obj, "patch_size", 2)
        grid = token_grid(x.shape[-2], x.shape[-1], patch)
        latent = (x.shape[-2], x.shape[-1], patch)
        if (to.get(GRID_KEY), to.get(LATENT_KEY), to.get(CONTEXT_KEY)) != (grid, latent, n_ctx):
            to = {**to, GRID_KEY: grid, LATENT_KEY: latent, CONTEXT_KEY: n_ctx}
            if len(args) > 7:
                args = (*args[:7], to, *args[8:])
            else:
                kwargs["transformer_options"] = to
    return executor(*args, **kwargs)


# --------------------------------------------------------------------------------------- entry point
def apply_pulid_flux(model, pulid, embedding, *, weight=1.0, start_percent=0.0, end_percent=1.0, start_step=0,
                     uncond_mode="uncond_id", mask=None):
    """Return a clone of the Flux MODEL `model` with the PuLID ID cross-attention (never mutates `model`).

    pulid: ModelPatcher whose .model is a PulidFluxModel. embedding: IDEmbedding (tokens (N, T, id_dim),
    uncond (1, T, id_dim)). uncond_mode: what the negative (CFG > 1) rows get: 'uncond_id' (official),
    'none' or 'same'. mask: optional MASK (B, H, W) / (H, W) limiting the ID to a region.
    weight == 0 returns `model` itself, whatever the other inputs (a weight-0 apply is a bypass, as in the node).
    """
    weight = check_weight(weight)
    if weight == 0.0:
        return model
    percents = check_window(start_percent, end_percent, start_step)
    if uncond_mode not in UNCOND_MODES:
        raise ValueError(f"uncond_mode={uncond_mode!r} must be one of {UNCOND_MODES}")
    pulid_model = getattr(pulid, "model", None)
    if not isinstance(pulid_model, PulidFluxModel):
        raise ValueError(f"pulid must be a ModelPatcher holding a PulidFluxModel, got {type(pulid_model).__name__}")
    layout = check_flux_model(model, pulid_model)
    tokens, uncond = check_embedding(embedding, pulid_model, uncond_mode)
    mask = check_mask(mask)
    m = model.clone()
    effect = _Effect(
        apply_id=uuid.uuid4().hex, ca_patcher=pulid.ca_patcher, tokens=tokens, uncond=uncond, weight=weight,
        percents=percents[:2], start_step=percents[2], uncond_mode=uncond_mode, mask=mask,
        fallback_window=sigma_window(m.get_model_object("model_sampling"), *percents[:2]),
    )
    existing = m.model_options["transformer_options"].get("patches_replace", {}).get("dit", {})
    for kind, name, placement in ((_DoublePatch, "double_block", layout.double),
                                  (_SinglePatch, "single_block", layout.single)):
        for block, ca_index in placement.items():
            patch = _make(kind, effect, ca_index, existing.get((name, block)))
            m.set_model_patch_replace(patch, "dit", name, block)
    m.add_wrapper_with_key(OUTER_SAMPLE, WRAPPER_KEY, _OuterSample(effect))
    if diffusion_model_wrapper not in m.get_wrappers(DIFFUSION_MODEL, WRAPPER_KEY):
        m.add_wrapper_with_key(DIFFUSION_MODEL, WRAPPER_KEY, diffusion_model_wrapper)
    return m
