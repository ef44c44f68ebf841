"""The sampler run as PuLID sees it: each cond list's role, each model call's step, the official CFG start."""

from __future__ import annotations

from dataclasses import dataclass

from comfy.patcher_extension import WrappersMP

from ..pulid.plan import list_role, role_maps
from ..pulid.schedule import acts_in_run, sigma_window

RUN_KEY = "pulid_flux_run"  # wrapper key, and transformer_options key of the run state
CALL_KEY = "pulid_flux_call"  # transformer_options key of the calc_cond_batch in progress
DEFAULT_CFG_START_STEP = 1  # official generate_image / denoise default timestep_to_start_cfg
_PARTNER = {frozenset({"positive", "negative"}): "positive", frozenset({"positive", "middle", "negative"}): "middle"}


def check_cfg_start_step(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"cfg_start_step={value!r} must be an integer >= 0 (official default "
                         f"{DEFAULT_CFG_START_STEP}; 0 = ComfyUI's CFG on every step)")
    return int(value)


@dataclass(frozen=True, slots=True)
class Spec:
    """One Apply's timing: ID window (percents), ID start step, CFG start step."""

    percents: tuple[float, float]
    start_step: int
    cfg_start: int


@dataclass(frozen=True, slots=True)
class Call:
    """What the model calls of one calc_cond_batch read: role per evaluated list, step, the step's sigma."""

    roles: tuple
    step: int
    sigma: float


class _Run:
    """The private, mutable state of one sampler run (only the sampler's thread writes it)."""

    __slots__ = ("maps", "cfg_start", "negative", "partner", "step", "sigma")

    def __init__(self, maps, cfg_start, negative, partner):
        self.maps, self.cfg_start, self.negative, self.partner = maps, cfg_start, negative, partner
        self.step, self.sigma = 0, None


@dataclass(frozen=True, slots=True, eq=False)
class Runner:
    specs: tuple[Spec, ...]

    def __deepcopy__(self, memo):
        return self

    def sample(self, executor, guider, sigmas, extra_args, callback, *args, **kwargs):
        """SAMPLER_SAMPLE wrapper."""
        conds = getattr(guider, "conds", None) or {}
        sampling = getattr(getattr(guider, "inner_model", None), "model_sampling", None)
        schedule = sigmas.tolist()  # the run's one read of the schedule
        acting = [s.cfg_start for s in self.specs if sampling is None
                  or acts_in_run(sigma_window(sampling, *s.percents), s.start_step, schedule)]
        partner = None if getattr(guider, "nested", False) else _PARTNER.get(frozenset(conds))
        run = _Run(role_maps(conds), min(acting, default=0), conds.get("negative"), partner and conds[partner])
        mo = extra_args.get("model_options") or {}
        extra_args = {**extra_args, "model_options": {**mo, "transformer_options": {
            **mo.get("transformer_options", {}), RUN_KEY: run}}}

        def step_done(step, *a, **k):
            if isinstance(step, int):
                run.step, run.sigma = step + 1, None
            return None if callback is None else callback(step, *a, **k)

        return executor(guider, sigmas, extra_args, step_done, *args, **kwargs)

    def __call__(self, executor, model, conds, x_in, timestep, model_options, *args, **kwargs):
        """CALC_COND_BATCH wrapper."""
        to = model_options.get("transformer_options", {}) if isinstance(model_options, dict) else {}
        run = to.get(RUN_KEY)
        if run is None or not isinstance(conds, (list, tuple)):
            return executor(model, conds, x_in, timestep, model_options, *args, **kwargs)
        if run.sigma is None:
            run.sigma = float(timestep.max())  # the step's sigma: one host read per step
        at = {id(c): i for i, c in enumerate(conds) if c is not None}
        skip = None
        if run.step < run.cfg_start and run.partner is not None and id(run.negative) in at and id(run.partner) in at:
            skip = (at[id(run.negative)], at[id(run.partner)])
            conds = [None if i == skip[0] else c for i, c in enumerate(conds)]
        call = Call(tuple(list_role(c, run.maps) for c in conds), run.step, run.sigma)
        mo = {**model_options, "transformer_options": {**to, CALL_KEY: call}}
        out = executor(model, conds, x_in, timestep, mo, *args, **kwargs)
        if skip is not None:
            out = list(out)
            out[skip[0]] = out[skip[1]]
        return out


def _runner(model) -> Runner | None:
    found = model.get_wrappers(WrappersMP.CALC_COND_BATCH, RUN_KEY)
    return found[0] if found else None


def _set_runner(model, runner: Runner):
    for kind in (WrappersMP.SAMPLER_SAMPLE, WrappersMP.CALC_COND_BATCH):
        model.remove_wrappers_with_key(kind, RUN_KEY)
    model.add_wrapper_with_key(WrappersMP.SAMPLER_SAMPLE, RUN_KEY, runner.sample)
    model.add_wrapper_with_key(WrappersMP.CALC_COND_BATCH, RUN_KEY, runner)
    return model


def add_run_spec(model, percents: tuple[float, float], start_step: int, cfg_start_step: int = 0):
    """Add one Apply's timing to the run of a MODEL clone that `model` owns (its own wrapper lists only)."""
    runner = _runner(model)
    spec = Spec(tuple(percents), start_step, check_cfg_start_step(cfg_start_step))
    return _set_runner(model, Runner((*(runner.specs if runner else ()), spec)))

