"""The official true-CFG start: no negative pass before step ``cfg_start_step``.

The official denoise loop (official flux/sampling.py denoise) runs the negative prompt only when
``i >= timestep_to_start_cfg`` (default 1) and uses the positive prediction alone before that. ComfyUI's
CFG runs the negative pass on every step. This module adds a CALC_COND_BATCH wrapper (present, with the
same call ``(model, conds, x_in, timestep, model_options)``, in ComfyUI 0.3.64 and 0.33) to a patched
MODEL clone: before the start step it drops the negative conds, so their model call is never made, and
returns the positive prediction in the negative slot. ComfyUI's cfg function then gives
``uncond + (cond - uncond) * cfg = cond`` exactly, i.e. the official prediction. It runs outside the
diffusion model (no graph break under torch.compile) and replaces no sampler.

Only the plain two-cond CFG call (positive, negative) is touched; guiders with more conds (DualCFG,
PerpNeg) and cfg 1 (ComfyUI already skips the negative pass) pass through unchanged. The step index is
the position of the current sigma in the run's schedule (``transformer_options["sample_sigmas"]``): with
split sampling (two samplers, or denoise < 1) each sampler counts from its own first step.

It belongs to the Apply that set it: in a run where that Apply's ID acts at no step (its window lies outside
the schedule), it does nothing either, so an inactive Apply leaves the graph exactly as without PuLID.
"""

from __future__ import annotations

from comfy.patcher_extension import WrappersMP
from torch import Tensor

from ..pulid.schedule import is_active, sigma_window, step_index

CFG_WRAPPER_KEY = "pulid_flux_cfg_start"
DEFAULT_CFG_START_STEP = 1  # official generate_image / denoise default timestep_to_start_cfg


def check_cfg_start_step(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"cfg_start_step={value!r} must be an integer >= 0 (official default "
                         f"{DEFAULT_CFG_START_STEP}; 0 = ComfyUI's CFG on every step)")
    return int(value)


class CFGStart:
    """CALC_COND_BATCH wrapper: positive prediction only for steps < start_step. Immutable, shared by clones.

    id_percents / id_start_step: the ID timing of the Apply it belongs to (see the module docstring).
    """

    __slots__ = ("start_step", "id_percents", "id_start_step")

    def __init__(self, start_step: int, id_percents: tuple[float, float] = (0.0, 1.0), id_start_step: int = 0):
        object.__setattr__(self, "start_step", check_cfg_start_step(start_step))
        object.__setattr__(self, "id_percents", tuple(id_percents))
        object.__setattr__(self, "id_start_step", id_start_step)

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __deepcopy__(self, memo):
        return self

    def skips(self, model, timestep, model_options) -> bool:
        """Whether the call at `timestep` is before the start step in a run where the ID acts (unknown
        schedule: never)."""
        if self.start_step <= 0 or not isinstance(timestep, Tensor) or timestep.numel() == 0:
            return False
        to = model_options.get("transformer_options", {}) if isinstance(model_options, dict) else {}
        schedule = to.get("sample_sigmas")
        if isinstance(schedule, Tensor):
            schedule = schedule.tolist()
        idx = step_index(float(timestep.max()), schedule)
        if idx is None or idx >= self.start_step:
            return False
        window = sigma_window(model.model_sampling, *self.id_percents)
        return any(is_active(float(s), window, self.id_start_step, schedule) for s in schedule[:-1])

    def __call__(self, executor, model, conds, x_in, timestep, model_options, *args, **kwargs):
        if (isinstance(conds, (list, tuple)) and len(conds) == 2 and conds[1] is not None
                and self.skips(model, timestep, model_options)):
            out = executor(model, [conds[0], None], x_in, timestep, model_options, *args, **kwargs)
            return [out[0], out[0]]  # negative slot = positive prediction: cfg gives the positive exactly
        return executor(model, conds, x_in, timestep, model_options, *args, **kwargs)


def set_cfg_start(model, start_step: int, id_percents: tuple[float, float] = (0.0, 1.0), id_start_step: int = 0):
    """Give a MODEL clone that `model` owns (e.g. the one apply_pulid_flux returned) the official CFG start.

    Mutates `model`'s own wrapper list only (never an upstream clone's: ModelPatcher.clone copies the lists).
    One setting per model: a later call replaces an earlier one. start_step 0 removes it. id_percents /
    id_start_step: the Apply's ID timing; in a run where the ID acts at no step the CFG start does nothing.
    """
    start_step = check_cfg_start_step(start_step)
    model.remove_wrappers_with_key(WrappersMP.CALC_COND_BATCH, CFG_WRAPPER_KEY)
    if start_step > 0:
        model.add_wrapper_with_key(WrappersMP.CALC_COND_BATCH, CFG_WRAPPER_KEY, CFGStart(start_step, id_percents, id_start_step))
    return model
