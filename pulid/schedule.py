"""When the ID cross-attention runs: a sigma window and the official integer start step.

Pure helpers; the ComfyUI `model_sampling` object enters only as an argument.

* The window is given as percents of the model's noise scale and converted to sigmas with the
  model_sampling in force *at sampling time* (so a ModelSamplingFlux placed after the PuLID node still gates
  right). Active when ``sigma_end <= sigma <= sigma_start`` (the convention of ComfyUI's own percent gates);
  start_percent 0 has no upper bound (a custom schedule may start above the model's largest sigma) and
  end_percent 1 no lower bound. Being sigmas, the percents mean the same noise levels whatever part of the
  schedule one sampler runs (split sampling, denoise < 1).
* ``start_step`` is the official semantics (official flux/sampling.py denoise): the ID is given to the
  model call of step ``i`` only when ``i >= start_step``. The step index is recovered from the schedule of
  the sampler run in progress (``transformer_options["sample_sigmas"]``) by matching the current sigma, so
  it counts from the first step of each sampler: a second sampler of a split run, or a run with
  denoise < 1, starts again at step 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# Sigma matching tolerance: schedules are float32 tensors, the current sigma comes from the same tensor
# (possibly after a dtype/device round trip), so a relative 1e-5 separates neighbours of any real schedule.
SIGMA_REL_TOL = 1e-5
SIGMA_ABS_TOL = 1e-7


def check_window(start_percent: float, end_percent: float, start_step: int) -> tuple[float, float, int]:
    """Validate the user-facing timing inputs; returns them as (float, float, int)."""
    for name, p in (("start_percent", start_percent), ("end_percent", end_percent)):
        if not isinstance(p, (int, float)) or not math.isfinite(p) or not 0.0 <= p <= 1.0:
            raise ValueError(f"{name}={p!r} must be a number between 0.0 and 1.0 (fraction of the schedule)")
    if start_percent > end_percent:
        raise ValueError(
            f"start_percent={start_percent!r} is after end_percent={end_percent!r}: the ID would never be "
            f"applied; set start_percent <= end_percent"
        )
    if isinstance(start_step, bool) or not isinstance(start_step, int) or start_step < 0:
        raise ValueError(f"start_step={start_step!r} must be an integer >= 0 (official default 0, photoreal 4)")
    return float(start_percent), float(end_percent), int(start_step)


def sigma_window(model_sampling, start_percent: float, end_percent: float) -> tuple[float, float]:
    """(sigma_start, sigma_end) from a ComfyUI model_sampling object's ``percent_to_sigma``; the ends of the
    scale (0 and 1) are open, so any sigma above the model's largest (or below its smallest) is inside."""
    start = math.inf if start_percent <= 0.0 else float(model_sampling.percent_to_sigma(start_percent))
    end = -math.inf if end_percent >= 1.0 else float(model_sampling.percent_to_sigma(end_percent))
    return start, end


def in_window(sigma: float, window: tuple[float, float]) -> bool:
    sigma_start, sigma_end = window
    return sigma_end <= sigma <= sigma_start


def step_index(sigma: float, sample_sigmas: Sequence[float] | None) -> int | None:
    """Index of the sampling step whose model call runs at `sigma`, or None without a schedule.

    An exact (isclose) match gives that index. A sigma between two schedule entries (the second
    evaluation of Heun/DPM-2 style samplers) belongs to the step that started above it.
    """
    if sample_sigmas is None or len(sample_sigmas) == 0:
        return None
    for i, s in enumerate(sample_sigmas):
        if math.isclose(s, sigma, rel_tol=SIGMA_REL_TOL, abs_tol=SIGMA_ABS_TOL):
            return i
    above = sum(1 for s in sample_sigmas if s > sigma)
    return max(above - 1, 0)


def is_active(sigma: float | None, window: tuple[float, float], start_step: int,
              sample_sigmas: Sequence[float] | None) -> bool:
    """Whether a model call at `sigma` gets the ID (no sigma known: always)."""
    if sigma is None:
        return True
    if not in_window(sigma, window):
        return False
    if start_step > 0:
        idx = step_index(sigma, sample_sigmas)
        if idx is not None and idx < start_step:
            return False
    return True
