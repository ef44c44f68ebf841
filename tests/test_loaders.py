"""The loader nodes in-process: the handles they build, their dtype (never ComfyUI's diffusion-model flags),
missing and refused files, and what Encode hands to ComfyUI's memory manager."""

from __future__ import annotations

import pytest
import torch
from conftest import COMFYUI_ROOT, NO_COMFYUI, import_pack, setup_comfyui

if COMFYUI_ROOT is None:
    pytest.skip(NO_COMFYUI, allow_module_level=True)
setup_comfyui()
import_pack()
from _e2e.pack_models import tiny_pulid_model  # noqa: E402
from _tiny_faces import cached, make_tiny_eva_checkpoint, tiny_eva_config  # noqa: E402
from _writers import save_pulid_file  # noqa: E402

from comfyui_pulid_flux.integration.handles import EvaClipModel, PulidFlux  # noqa: E402
from comfyui_pulid_flux.nodes import loaders, paths  # noqa: E402

# Every flag that makes comfy.model_management.unet_dtype() return its dtype, whatever the device.
FLAG_DTYPES = {"fp8_e4m3fn_unet": torch.float8_e4m3fn, "fp8_e5m2_unet": torch.float8_e5m2,
               "fp8_e8m0fnu_unet": torch.float8_e8m0fnu, "fp16_unet": torch.float16, "fp64_unet": torch.float64,
               "bf16_unet": torch.bfloat16, "fp32_unet": torch.float32}


@pytest.fixture
def model_dirs(tmp_path):
    """models/pulid and models/clip in tmp_path with the tiny files; folder_paths restored afterwards."""
    import folder_paths

    keys = ("pulid", "text_encoders", "clip_vision")
    saved = {k: folder_paths.folder_names_and_paths.get(k) for k in keys}
    cfg = tiny_eva_config()
    for k in keys:
        (tmp_path / k).mkdir()
        folder_paths.folder_names_and_paths[k] = ([str(tmp_path / k)], set(folder_paths.supported_pt_extensions))
    save_pulid_file(tiny_pulid_model(cfg.width, cfg.embed_dim), tmp_path / "pulid" / "pulid_tiny.safetensors")
    (tmp_path / "text_encoders" / "eva_tiny.pt").symlink_to(cached("eva_official.pt", make_tiny_eva_checkpoint))
    yield tmp_path
    for k, v in saved.items():
        folder_paths.folder_names_and_paths[k] = v


def _dtypes(module: torch.nn.Module) -> set:
    return {p.dtype for p in module.parameters() if p.is_floating_point()}


def test_pulid_loader_builds_the_handle(model_dirs):
    pulid = loaders.ModelLoader.execute(pulid_file="pulid_tiny.safetensors").args[0]
    assert isinstance(pulid, PulidFlux) and pulid.name == "pulid_tiny.safetensors"
    assert pulid.encoder_patcher.model is pulid.model.pulid_encoder
    part = pulid.wrap(pulid.model.pulid_ca[0])
    assert (part.load_device, part.offload_device) == (pulid.encoder_patcher.load_device,
                                                       pulid.encoder_patcher.offload_device)


def test_eva_loader_builds_the_handle(model_dirs):
    eva = loaders.EvaClipLoader.execute(eva_file="eva_tiny.pt").args[0]
    assert isinstance(eva, EvaClipModel) and eva.patcher.model is eva.tower
    assert eva.tower.config == tiny_eva_config()


@pytest.mark.parametrize("bf16_device", [False, True], ids=["fp32-device", "bf16-device"])
@pytest.mark.parametrize("flag", [None, *FLAG_DTYPES])
def test_side_model_dtype_ignores_the_diffusion_model_flags(model_dirs, monkeypatch, flag, bf16_device):
    import comfy.cli_args
    import comfy.model_management as mm

    monkeypatch.setattr(mm, "should_use_bf16", lambda *a, **k: bf16_device)  # what the device supports
    if flag is not None:
        monkeypatch.setattr(comfy.cli_args.args, flag, True)  # restored by monkeypatch
        # the flag is live in this process: ComfyUI's diffusion-model dtype follows it
        assert mm.unet_dtype(mm.get_torch_device(), supported_dtypes=[torch.bfloat16, torch.float32]) == FLAG_DTYPES[flag]
    want = {torch.bfloat16 if bf16_device else torch.float32}
    pulid = loaders.ModelLoader.execute(pulid_file="pulid_tiny.safetensors").args[0]
    eva = loaders.EvaClipLoader.execute(eva_file="eva_tiny.pt").args[0]
    assert _dtypes(pulid.model) == want and _dtypes(eva.tower) == want


def test_fp8_pulid_file_is_refused_naming_the_fix(model_dirs):
    cfg = tiny_eva_config()
    save_pulid_file(tiny_pulid_model(cfg.width, cfg.embed_dim), model_dirs / "pulid" / "pulid_fp8.safetensors",
                    dtype=torch.float8_e4m3fn)
    source = paths.MODEL_FILES[paths.PULID].source
    with pytest.raises(ValueError, match=rf"pulid_fp8.safetensors stores its weights in torch.float8_e4m3fn.*"
                                         rf"pulid_flux_v0.9.1.safetensors \({source}"):
        loaders.ModelLoader.execute(pulid_file="pulid_fp8.safetensors")


def test_missing_files_name_folder_file_and_source(model_dirs):
    for node, arg, key in ((loaders.ModelLoader, "pulid_file", paths.PULID),
                           (loaders.EvaClipLoader, "eva_file", paths.EVA_CLIP)):
        entry = paths.MODEL_FILES[key]
        with pytest.raises(FileNotFoundError) as e:
            node.execute(**{arg: "gone.safetensors"})
        msg = str(e.value)
        assert "'gone.safetensors'" in msg and entry.files[0] in msg and entry.source in msg and entry.licence in msg
        assert str(model_dirs / entry.folders[0]) in msg


def test_eva_loader_refuses_another_eva_naming_both(model_dirs):
    from comfyui_pulid_flux.encoders import EVA02_CLIP_L_336, EvaVisionConfig

    other = EvaVisionConfig(image_size=56, patch_size=14, width=64, depth=24, num_heads=1, mlp_hidden=170, embed_dim=32)
    make_tiny_eva_checkpoint(str(model_dirs / "clip_vision" / "eva_56px.pt"), config=other)
    with pytest.raises(ValueError, match=rf"eva_56px.pt is an EVA-CLIP tower of 56 px.* needs EVA02-CLIP-L-14-336: "
                                         rf"{EVA02_CLIP_L_336.image_size} px"):
        loaders.EvaClipLoader.execute(eva_file="eva_56px.pt")


def test_encode_loads_the_idformer_and_eva_whole(model_dirs, monkeypatch):
    """Encode hands ComfyUI the IDFormer's and EVA's patchers (never the CAs), with force_full_load."""
    import comfy.model_management as mm
    from _encoder_fixtures import Models, as_image
    from _tiny_faces import face_image

    from comfyui_pulid_flux.nodes.encode import EncodeIdentity

    pulid = loaders.ModelLoader.execute(pulid_file="pulid_tiny.safetensors").args[0]
    eva = loaders.EvaClipLoader.execute(eva_file="eva_tiny.pt").args[0]
    calls, real = [], mm.load_models_gpu
    monkeypatch.setattr(mm, "load_models_gpu", lambda models, **kw: calls.append((list(models), kw)) or real(models, **kw))
    faces = Models()
    try:
        out = EncodeIdentity.execute(pulid=pulid, eva_clip=eva, face_analysis=faces.analyzer, facexlib=faces.aligner,
                                     image=as_image(face_image(blobs=((320, 224, 32, 220),))), face_rule="largest",
                                     face_index=0, align_source="insightface", fusion="mean", fusion_weights="",
                                     antialias=True)
    finally:
        del faces.aligner.detector.detect_faces, faces.aligner.parse
    assert calls == [([pulid.encoder_patcher, eva.patcher], {"force_full_load": True})]
    identity, preview = out.args
    enc = pulid.model.pulid_encoder
    assert identity.tokens.shape == (1, enc.num_queries, enc.output_dim) and identity.uncond.shape == identity.tokens.shape
    assert preview.shape[0] == 1 and torch.isfinite(identity.tokens).all()
