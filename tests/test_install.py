"""The onnxruntime decision logic of install.py (pure; nothing is installed)."""

import importlib.util
import sys

import pytest
from conftest import ROOT

spec = importlib.util.spec_from_file_location("pulid_install", ROOT / "install.py")
install = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = install  # dataclasses look their module up
spec.loader.exec_module(install)


def args(steps):
    return [s.pip_args for s in steps]


def test_cpu_only_machine_is_left_alone():
    steps, warnings = install.plan(cpu="1.32.0", gpu=None, torch_cuda=None)
    assert steps == [] and warnings == []


def test_gpu_build_overwritten_by_insightface_is_restored_for_cuda13():
    steps, _ = install.plan(cpu="1.32.0", gpu="1.31.1", torch_cuda="13.0")
    assert args(steps) == [("uninstall", "-y", "onnxruntime"),
                           ("install", "--force-reinstall", "--no-deps", "onnxruntime-gpu==1.31.1")]


def test_gpu_build_of_wrong_cuda_major_is_replaced():
    steps, _ = install.plan(cpu="1.32.0", gpu="1.31.1", torch_cuda="12.8")
    assert args(steps)[-1] == ("install", "--force-reinstall", "--no-deps", "onnxruntime-gpu>=1.23,<1.27")
    steps, _ = install.plan(cpu=None, gpu="1.24.4", torch_cuda="13.0")
    assert args(steps) == [("install", "--force-reinstall", "--no-deps", "onnxruntime-gpu>=1.27")]


def test_matching_gpu_build_alone_is_kept():
    steps, warnings = install.plan(cpu=None, gpu="1.26.0", torch_cuda="12.4")
    assert steps == [] and warnings == []


def test_opt_in_gpu_on_cpu_runtime():
    steps, _ = install.plan(cpu="1.32.0", gpu=None, torch_cuda="12.8", mode="gpu")
    assert args(steps) == [("uninstall", "-y", "onnxruntime"),
                           ("install", "--force-reinstall", "--no-deps", "onnxruntime-gpu>=1.23,<1.27")]


def test_unknown_cuda_keeps_runtime_with_warning():
    steps, warnings = install.plan(cpu="1.32.0", gpu="1.31.1", torch_cuda=None)
    assert steps == [] and "no onnxruntime-gpu build is known" in warnings[0]


def test_cpu_mode_warns_about_both_installed():
    steps, warnings = install.plan(cpu="1.32.0", gpu="1.31.1", torch_cuda="13.0", mode="cpu")
    assert steps == [] and "both onnxruntime" in warnings[0]


def test_bad_mode_names_value():
    with pytest.raises(ValueError, match="PULID_ONNXRUNTIME='fast'"):
        install.plan(cpu=None, gpu=None, torch_cuda=None, mode="fast")
