"""When the ID cross-attention runs: a sigma window and the official integer start step."""

from __future__ import annotations

import math
from collections.abc import Sequence


def check_window(start_percent: float, end_percent: float, start_step: int) -> tuple[float, float, int]:
    """Validate the user-facing timing inputs; returns them as (float, float, int)."""
    for name, p in (("start_percent", start_percent), ("end_percent", end_percent)):
        if not isinstance(p, (int, float)) or not math.isfinite(p) or not 0.0 <= p <= 1.0:
            raise ValueError(f"{name}={p!r} must be a number between 0.0 and 1.0 (fraction of the schedule)")
    if start_percent > end_percent:
        raise ValueError(f"start_percent={start_percent!r} is after end_percent={end_percent!r}: the ID would never be "
                         f"applied; set start_percent <= end_percent")
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


def is_active(sigma: float | None, window: tuple[float, float], start_step: int, step: int | None) -> bool:
    """Whether a model call of sampler step `step` (None: unknown) at `sigma` (None: unknown) gets the ID."""
    if sigma is not None and not in_window(sigma, window):
        return False
    return step is None or step >= start_step


def acts_in_run(window: tuple[float, float], start_step: int, schedule: Sequence[float]) -> bool:
    """Whether the ID acts at some step of a run with this schedule (step i runs at schedule[i])."""
    return any(is_active(s, window, start_step, i) for i, s in enumerate(schedule[:-1]))
