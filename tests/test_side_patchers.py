"""Side models (IDFormer, EVA, ID table) get core's patcher class, so under Dynamic VRAM (0.33's default on
NVIDIA, where ComfyUI sets `comfy.model_patcher.CoreModelPatcher` to its dynamic patcher) a PuLID run's load set
holds no legacy patcher. What the CPU can show: the class chosen per version, that ComfyUI loads and samples
with it, and that a plain graph afterwards equals a fresh one (the dynamic patcher itself needs a GPU)."""

from __future__ import annotations

import pytest
import torch
from conftest import COMFYUI_ROOT, NO_COMFYUI, setup_comfyui

if COMFYUI_ROOT is None:
    pytest.skip(NO_COMFYUI, allow_module_level=True)
setup_comfyui()

import _tiny_flux as T  # noqa: E402
import comfy.model_management as mm  # noqa: E402
import comfy.model_patcher as mp  # noqa: E402

from comfyui_pulid_flux.integration import handles  # noqa: E402
from comfyui_pulid_flux.integration.patch import apply_pulid_flux  # noqa: E402


class CorePatcherSpy(mp.ModelPatcher):
    """Stands in for core's side-model class (the dynamic patcher cannot be built without a GPU)."""


def test_the_class_is_cores_per_version():
    patcher = handles.wrap(torch.nn.Linear(2, 2))
    if hasattr(mp, "CoreModelPatcher"):  # 0.33: the name ComfyUI rebinds when Dynamic VRAM is on
        assert type(patcher) is mp.CoreModelPatcher
    else:  # 0.3.64 has no such name: the plain patcher
        assert type(patcher) is mp.ModelPatcher
    assert (patcher.load_device, patcher.offload_device) == (mm.get_torch_device(), mm.unet_offload_device())
    other = torch.device("meta")
    assert handles.wrap(torch.nn.Linear(2, 2), load_device=other).load_device == other


def test_every_side_patcher_is_built_from_cores_name_at_call_time(monkeypatch):
    monkeypatch.setattr(mp, "CoreModelPatcher", CorePatcherSpy, raising=False)  # as main.py rebinds it
    pp = T.pulid_patcher(T.tiny_pulid_model())
    eva = handles.EvaClipModel(torch.nn.Linear(2, 2), "eva")
    assert type(pp.encoder_patcher) is CorePatcherSpy and type(eva.patcher) is CorePatcherSpy
    base = T.tiny_flux_patcher()
    for folded in (True, False):
        patched = apply_pulid_flux(base, pp, T.tiny_embedding(), folded=folded)
        side = patched.model_patches_models()  # what load_models_gpu adds to Flux's load set
        assert side and all(type(p) is CorePatcherSpy for p in side), [type(p) for p in side]


@pytest.mark.skipif(not hasattr(mp, "ModelPatcherDynamic"), reason="ComfyUI 0.3.64 has no dynamic patcher")
def test_sampling_with_dynamic_vram_switched_on(monkeypatch):
    """main.py's switch on a CPU box: the dynamic class reroutes to the plain one for a CPU load device; loading,
    sampling, weight 0 and the plain graph afterwards behave as without it."""
    monkeypatch.setattr(mp, "CoreModelPatcher", mp.ModelPatcherDynamic)
    base = T.tiny_flux_patcher()
    fresh = T.sample(base, cfg=2.0)
    pp = T.pulid_patcher(T.tiny_pulid_model())
    patched = apply_pulid_flux(base, pp, T.tiny_embedding())
    mm.load_models_gpu([pp.encoder_patcher])
    with_id = T.sample(patched, cfg=2.0)
    assert torch.isfinite(with_id).all() and not torch.equal(with_id, fresh)
    assert torch.equal(T.sample(apply_pulid_flux(base, pp, T.tiny_embedding(), start_step=99), cfg=2.0), fresh)
    assert torch.equal(T.sample(base, cfg=2.0), fresh)
    assert torch.equal(T.sample(T.tiny_flux_patcher(), cfg=2.0), fresh)
