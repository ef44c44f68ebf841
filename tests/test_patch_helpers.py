"""Pure helpers of the patch: schedule gating (percent window, official start_step) and mask -> token weights."""

from __future__ import annotations

import pytest
import torch
from conftest import import_pack

import_pack()
from comfyui_pulid_flux.pulid.regional import (  # noqa: E402
    check_mask,
    check_mask_batch,
    token_grid,
    token_weights,
)
from comfyui_pulid_flux.pulid.schedule import (  # noqa: E402
    acts_in_run,
    check_window,
    in_window,
    is_active,
    sigma_window,
)


class FluxLikeSampling:
    """percent_to_sigma with ComfyUI ModelSamplingFlux's end points (0 -> 1.0, 1 -> 0.0), linear between."""

    def percent_to_sigma(self, p):
        return 1.0 - p


def test_start_step_and_window():
    schedule = [1.0, 0.75, 0.5, 0.25, 0.0]
    full = (1.0, 0.0)
    assert [is_active(s, full, 2, i) for i, s in enumerate(schedule[:-1])] == [False, False, True, True]
    assert [is_active(s, (0.8, 0.3), 0, i) for i, s in enumerate(schedule[:-1])] == [False, True, True, False]
    assert is_active(None, (0.1, 0.0), 5, None)  # neither sigma nor step known: nothing to gate on
    assert in_window(0.5, (0.5, 0.5))
    assert acts_in_run(full, 3, schedule) and not acts_in_run(full, 4, schedule)
    assert not acts_in_run((0.8, 0.3), 3, schedule) and acts_in_run((0.8, 0.3), 2, schedule)


def test_window_ends_are_open():
    """start_percent 0 takes any sigma above the model's largest (a custom schedule may start above 1),
    end_percent 1 any below its smallest; inner percents come from the model_sampling."""
    ms = FluxLikeSampling()
    start, end = sigma_window(ms, 0.0, 1.0)
    assert start == float("inf") and end == float("-inf")
    assert is_active(1.6, (start, end), 0, 0)
    assert sigma_window(ms, 0.25, 0.75) == (0.75, 0.25)
    assert not is_active(1.6, sigma_window(ms, 0.1, 1.0), 0, None)


def test_check_window():
    assert check_window(0, 1, 0) == (0.0, 1.0, 0)
    with pytest.raises(ValueError, match="start_step=1.5"):
        check_window(0.0, 1.0, 1.5)
    with pytest.raises(ValueError, match="start_percent=nan"):
        check_window(float("nan"), 1.0, 0)


def test_token_weights_area_average():
    mask = torch.zeros(1, 64, 96)
    mask[:, :, :48] = 1.0
    mask[:, :16, 48:64] = 0.5
    w = token_weights(mask, (4, 6), torch.device("cpu"), torch.float16)
    assert w.shape == (1, 24, 1) and w.dtype == torch.float16
    grid = w.view(4, 6).float()
    assert torch.equal(grid[:, :3], torch.ones(4, 3)) and grid[0, 3] == 0.5 and grid[1:, 3:].abs().max() == 0
    # any resolution: the same relative region on a 3x smaller mask
    small = torch.nn.functional.interpolate(mask[None], size=(16, 24), mode="area")[0]
    torch.testing.assert_close(token_weights(small, (4, 6), "cpu", torch.float32), w.float(), atol=1e-6, rtol=0)


def test_token_weights_follow_flux_padding_of_odd_latents():
    # 72x56 px -> latent 9x7 -> Flux pads to 10x8 -> 5x4 tokens of 16x16 px; the last row / column of
    # tokens holds 8 px of image and 8 px of padding, so the mask must not be stretched over all 5x4.
    grid = token_grid(9, 7, 2)
    assert grid == (5, 4)
    mask = torch.zeros(1, 72, 56)
    mask[:, :, :32] = 1.0  # exactly token columns 0 and 1 (pixels 0-31)
    mask[:, 64:, 32:] = 0.25  # exactly the image part of token row 4 (pixels 64-71), columns 2-3
    w = token_weights(mask, grid, "cpu", torch.float32, (9, 7, 2)).view(5, 4)
    expected = torch.zeros(5, 4)
    expected[:, :2] = 1.0
    expected[4, 2:] = 0.25
    torch.testing.assert_close(w, expected, atol=1e-6, rtol=0)
    # the same relative region on a mask of another size
    half = torch.nn.functional.interpolate(mask[None], size=(36, 28), mode="area")[0]
    torch.testing.assert_close(token_weights(half, grid, "cpu", torch.float32, (9, 7, 2)).view(5, 4), expected,
                               atol=1e-6, rtol=0)
    even = torch.rand(2, 64, 96)  # an even latent (8x12): the same as spreading the mask over the whole grid
    torch.testing.assert_close(token_weights(even, (4, 6), "cpu", torch.float32, (8, 12, 2)),
                               token_weights(even, (4, 6), "cpu", torch.float32), atol=1e-6, rtol=0)


def test_token_grid_matches_flux_padding():
    assert token_grid(64, 64, 2) == (32, 32)
    assert token_grid(5, 7, 2) == (3, 4)  # padded like comfy.ldm.common_dit.pad_to_patch_size


def test_mask_checks():
    assert check_mask(None) is None
    assert check_mask(torch.ones(8, 8)).shape == (1, 8, 8)
    with pytest.raises(ValueError, match="NaN"):
        check_mask(torch.full((2, 4, 4), float("nan")))
    check_mask_batch(1, 4)
    check_mask_batch(4, 4)
    with pytest.raises(ValueError, match=r"mask batch 3 matches neither 1 nor the latent batch 2"):
        check_mask_batch(3, 2)
