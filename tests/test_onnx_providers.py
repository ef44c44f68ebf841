"""The onnxruntime providers of the face models per loader choice: 'auto' is the CPU (a GPU provider's memory
arena holds VRAM ComfyUI can neither see nor free), an explicit GPU provider gets a bounded arena; with a fake
onnxruntime offering CUDA, so the choice is shown without a GPU build."""

from __future__ import annotations

import importlib.machinery
import logging
import shutil
import sys
import types

import pytest
from _tiny_faces import cached, make_tiny_antelopev2
from conftest import import_pack

import_pack()
from comfyui_pulid_flux.encoders import face_analysis as fa  # noqa: E402

GPU_BUILD = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
EXPECTED = {"auto": ["CPUExecutionProvider"], "CPU": ["CPUExecutionProvider"],
            "CUDA": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


@pytest.fixture
def fake_ort(monkeypatch):
    ort = types.ModuleType("onnxruntime")
    ort.__spec__ = importlib.machinery.ModuleSpec("onnxruntime", None)  # for find_spec() callers
    ort.__version__ = "0.0-fake"
    ort.offered = list(GPU_BUILD)
    ort.get_available_providers = lambda: list(ort.offered)
    monkeypatch.setitem(sys.modules, "onnxruntime", ort)
    monkeypatch.setattr(fa, "_installed", lambda name: False)
    return ort


@pytest.mark.parametrize("choice", fa.PROVIDER_CHOICES)
def test_provider_list_per_choice(fake_ort, choice, caplog):
    with caplog.at_level(logging.WARNING):
        providers = fa.onnx_providers(choice)
    if choice in EXPECTED:
        assert providers == EXPECTED[choice]
        assert "offers no" not in caplog.text
    else:  # ROCM, CoreML: not in this build -> the CPU, and the user is told
        assert providers == ["CPUExecutionProvider"]
        assert f"offers no {choice}ExecutionProvider" in caplog.text
    fake_ort.offered.append(f"{choice}ExecutionProvider")
    if choice not in ("auto", "CPU"):
        assert fa.onnx_providers(choice) == [f"{choice}ExecutionProvider", "CPUExecutionProvider"]
    assert providers[-1] == "CPUExecutionProvider"


def test_auto_never_picks_a_gpu_and_a_bad_choice_is_named(fake_ort):
    assert fa.onnx_providers() == ["CPUExecutionProvider"]
    with pytest.raises(ValueError, match=r"provider 'cuda'.*'auto', 'CPU', 'CUDA'"):
        fa.onnx_providers("cuda")


def test_gpu_providers_get_a_bounded_arena():
    assert fa.provider_options(["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        {"arena_extend_strategy": "kSameAsRequested"}, {}]
    assert fa.provider_options(["ROCMExecutionProvider", "CPUExecutionProvider"])[0] == fa.GPU_ARENA
    assert fa.provider_options(["CPUExecutionProvider"]) == [{}]


def test_the_options_reach_insightface(fake_ort, monkeypatch, tmp_path):
    """load_face_analyzer hands insightface the chosen providers and their options (a recording FaceAnalysis)."""
    seen = {}

    class Session:
        def get_providers(self):
            return seen["providers"]

    class FakeFaceAnalysis:
        def __init__(self, **kwargs):
            seen.update(kwargs)
            self.models = {"detection": object(), "recognition": object()}
            self.det_model = types.SimpleNamespace(session=Session())

        def prepare(self, **kwargs):
            pass

    app = types.ModuleType("insightface.app")
    app.FaceAnalysis = FakeFaceAnalysis
    monkeypatch.setitem(sys.modules, "insightface.app", app)
    folder = shutil.copytree(cached("antelopev2", make_tiny_antelopev2), tmp_path / "antelopev2")
    for choice, options in (("auto", [{}]), ("CUDA", [fa.GPU_ARENA, {}])):
        seen.clear()
        analyzer = fa.load_face_analyzer(folder, providers=fa.onnx_providers(choice))
        assert seen["providers"] == EXPECTED[choice] and seen["provider_options"] == options
        del analyzer


def test_the_loader_node_offers_the_choices_and_passes_the_list(fake_ort, monkeypatch):
    from conftest import COMFYUI_ROOT, NO_COMFYUI, setup_comfyui

    if COMFYUI_ROOT is None:
        pytest.skip(NO_COMFYUI)
    setup_comfyui()
    from comfyui_pulid_flux.nodes import loaders, paths

    provider = next(i for i in loaders.FaceAnalysisLoader.define_schema().inputs if i.id == "provider")
    assert list(provider.options) == list(fa.PROVIDER_CHOICES) and provider.default == "auto"
    assert "auto = the CPU" in provider.tooltip
    calls = []
    monkeypatch.setattr(paths, "insightface_pack_dirs", lambda: {"antelopev2": "/nowhere"})
    monkeypatch.setattr(loaders.encoders, "load_face_analyzer", lambda folder, providers: calls.append(providers))
    for choice in EXPECTED:
        loaders.FaceAnalysisLoader.execute(model_pack="antelopev2", provider=choice)
    assert calls == list(EXPECTED.values())
