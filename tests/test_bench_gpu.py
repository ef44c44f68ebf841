"""bench/gpu.py keeps working: its CPU mode (the tiny configuration, bf16/fp8 replaced by fp32/fp8 on the CPU) runs
against this ComfyUI and writes every figure. No time is asserted; ratios must be finite and positive."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
from conftest import COMFYUI_ROOT, NO_COMFYUI, ROOT

if COMFYUI_ROOT is None:
    pytest.skip(NO_COMFYUI, allow_module_level=True)

VARIANTS = ("plain", "folded", "unfolded")


def positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "gpu.json"
    cmd = [sys.executable, str(ROOT / "bench" / "gpu.py"), "--tiny", "--comfyui", str(COMFYUI_ROOT), "--json", str(out),
           "--rounds", "2", "--calls", "2", "--repeat", "1", "--sample-steps", "2"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT,
                       env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(out.read_text()), p.stdout


def test_cpu_mode_writes_every_figure(bench):
    data, stdout = bench
    assert data["mode"] == "cpu-tiny"
    assert [c["name"] for c in data["configs"]] == ["fp32/cpu", "fp8/cpu"]
    for c in data["configs"]:
        assert "error" not in c, c
        assert c["device"] == "cpu" and c["geometry"]["hidden"] == 64 and c["geometry"]["image_tokens"] == 256
        assert positive(c["encode_s"])
        for v in ("folded", "unfolded"):
            assert positive(c["apply_s"][v]) and positive(c["table_bytes"][v]) and positive(c["step_ratio"][v])
        assert all(positive(c["step_s"][v]) for v in VARIANTS)
        assert set(c["peak_vram_bytes"]) == set(VARIANTS)
        assert all(b is None for b in c["peak_vram_bytes"].values()) and c["peak_vram_ratio"] is None  # no CUDA
        runs = c["runs_s"]
        for k in ("weight0", "weight1_first", "weight1_second", "plain_after"):
            assert positive(runs[k]) and f"{k}_peak_vram_bytes" in runs
        assert positive(c["second_run_ratio"]) and positive(c["expected_ratio"])
        assert 0 <= c["precision_rel"] < 1e-2  # same algebra; fp32 here, so rounding only
    assert c["geometry"]["weights"] == "torch.float8_e4m3fn"
    for row in ("step ms", "fp32/cpu", "fp8/cpu", "unfolded", "weight-1 second run / weight 0", "PuLID's effect"):
        assert row in stdout


def test_a_configuration_process_that_fails_is_reported(tmp_path):
    """The CUDA path's per-configuration process: its command line parses, and a failing one becomes an error
    entry naming the cause (here ComfyUI is missing), not a crash of the whole run."""
    import argparse
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "bench" / "gpu.py")
    gpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu)
    a = argparse.Namespace(comfyui=str(tmp_path), rounds=1, calls=1, repeat=1, sample_steps=1, timeout=120)
    out = gpu.run_subprocess("bf16/normal", a, tiny=False)
    assert out == {"name": "bf16/normal", "error": "ModuleNotFoundError: No module named 'comfy'"}
    assert "bf16/normal" in gpu.table([out]) and "failed: ModuleNotFoundError" in gpu.table([out])
