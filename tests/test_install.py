"""install.py: the onnxruntime decision logic (pure), and the report-only default (nothing is installed)."""

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
    with pytest.raises(ValueError, match="mode 'fast'"):
        install.plan(cpu=None, gpu=None, torch_cuda=None, mode="fast")


@pytest.fixture
def shadowed_gpu(monkeypatch):
    """A venv where insightface's CPU onnxruntime shadows onnxruntime-gpu, torch on CUDA 13; pip is recorded."""
    versions = {"onnxruntime": "1.32.0", "onnxruntime-gpu": "1.31.1"}
    monkeypatch.setattr(install, "_installed", versions.get)
    monkeypatch.setattr(install, "_torch_cuda", lambda: ("13.0", True))
    calls = []
    monkeypatch.setattr(install.subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    return calls


def test_default_run_changes_nothing_and_logs_the_exact_commands(shadowed_gpu, caplog):
    caplog.set_level("INFO", logger="PuLID-Flux install")
    assert install.main([]) == 0
    assert shadowed_gpu == [], "install.py must not run pip unless --repair-onnxruntime is given"
    expected_steps, _ = install.plan("1.32.0", "1.31.1", "13.0")
    for step in expected_steps:  # every fix is printed as a command the user can paste
        assert install.command(sys.executable, step) in caplog.text
    assert f"install.py {install.REPAIR_FLAG}" in caplog.text


def test_repair_flag_runs_exactly_the_logged_commands(shadowed_gpu):
    assert install.main([install.REPAIR_FLAG]) == 0
    steps, _ = install.plan("1.32.0", "1.31.1", "13.0")
    assert shadowed_gpu == [[sys.executable, "-m", "pip", *s.pip_args] for s in steps] and steps


def test_healthy_or_cpu_only_venv_reports_nothing_to_fix(monkeypatch, caplog):
    monkeypatch.setattr(install, "_installed", {"onnxruntime": "1.32.0"}.get)
    monkeypatch.setattr(install, "_torch_cuda", lambda: (None, False))
    monkeypatch.setattr(install.subprocess, "run", lambda *a, **k: pytest.fail("pip must not run"))
    caplog.set_level("INFO", logger="PuLID-Flux install")
    assert install.main([]) == 0 and install.main([install.REPAIR_FLAG]) == 0
    assert "needs a repair" not in caplog.text


@pytest.mark.parametrize("cuda", [(None, False), ("12.8", True)], ids=["cpu-torch", "cuda-torch"])
def test_missing_onnxruntime_is_reported_never_called_fine(monkeypatch, caplog, cuda):
    monkeypatch.setattr(install, "_installed", {}.get)  # neither onnxruntime nor onnxruntime-gpu
    monkeypatch.setattr(install, "_torch_cuda", lambda: cuda)
    monkeypatch.setattr(install.subprocess, "run", lambda *a, **k: pytest.fail("pip must not run"))
    caplog.set_level("INFO", logger="PuLID-Flux install")
    assert install.main([]) == 0
    assert "onnxruntime is not installed: insightface cannot run" in caplog.text
    assert f"{sys.executable} -m pip install onnxruntime" in caplog.text and "fine" not in caplog.text
