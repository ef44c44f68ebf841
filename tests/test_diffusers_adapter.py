"""The diffusers adapter on a tiny FluxPipeline with random weights built locally: the example script, per-item IDs
for batched prompts, the region mask, removal, an ID file between ComfyUI's Save/Load ID nodes and diffusers,
model CPU offload, torch.compile (no added graph break, no recompile across steps), clear errors."""

from __future__ import annotations

import importlib.util

import _diffusers_tiny as DT
import pytest
import torch
from conftest import ROOT, import_pack

pytest.importorskip("diffusers")
from pulid_flux_id.diffusers_pulid import attach, encode_images, load_id, missing_model_files, save_id  # noqa: E402
from pulid_flux_id.pulid.embedding import IDEmbedding  # noqa: E402

RUN = dict(num_inference_steps=2, height=64, width=64, output_type="latent")


@pytest.fixture(scope="module")
def tiny():
    pipe = DT.tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe, DT.tiny_pulid_model(pipe.transformer)


def run(pipe, prompt, seed=0, **kw):
    return pipe(prompt, generator=torch.Generator().manual_seed(seed), **{**RUN, **kw}).images


@torch.no_grad()
def test_example_script_runs_on_a_tiny_pipeline(tiny):
    pipe, pm = tiny
    spec = importlib.util.spec_from_file_location("example", ROOT / "diffusers_example" / "diffusers_pulid_flux.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    plain = run(pipe, "a portrait photo of a person")
    got = example.generate(pipe, pm, DT.tiny_identity(pm), "a portrait photo of a person", **RUN,
                           generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(got).all() and (got - plain).abs().max() > 1e-4
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in pipe.transformer.modules())
    assert torch.equal(run(pipe, "a portrait photo of a person"), plain)  # removed: bit-identical again


@torch.no_grad()
def test_per_item_ids_for_batched_prompts(tiny):
    pipe, pm = tiny
    ids = DT.tiny_identity(pm, n=2)
    prompts = ["a portrait photo of a person", "a smiling person"]
    latents = torch.randn(4, (RUN["height"] // 16) * (RUN["width"] // 16), pipe.transformer.config.in_channels,
                          generator=torch.Generator().manual_seed(5))
    with attach(pipe.transformer, pm, ids):
        both = run(pipe, prompts, num_images_per_prompt=2, latents=latents)
    for i, prompt in enumerate(prompts):  # prompt i with ID i alone: the same two images
        one = IDEmbedding(tokens=ids.tokens[i:i + 1], uncond=ids.uncond)
        with attach(pipe.transformer, pm, one):
            alone = run(pipe, prompt, num_images_per_prompt=2, latents=latents[2 * i:2 * i + 2])
        torch.testing.assert_close(both[2 * i:2 * i + 2], alone, atol=1e-5, rtol=1e-4)
    with attach(pipe.transformer, pm, DT.tiny_identity(pm, n=3)), pytest.raises(ValueError, match="3 IDs"):
        run(pipe, prompts)


@torch.no_grad()
def test_region_mask(tiny):
    pipe, pm = tiny
    ident, prompt = DT.tiny_identity(pm), "a portrait photo of a person"
    plain = run(pipe, prompt)
    with attach(pipe.transformer, pm, ident):
        full = run(pipe, prompt)
    with attach(pipe.transformer, pm, ident, mask=torch.ones(32, 32)):
        assert torch.equal(run(pipe, prompt), full)
    with attach(pipe.transformer, pm, ident, mask=torch.zeros(32, 32)):
        assert torch.equal(run(pipe, prompt), plain)
    left = torch.zeros(64, 64)
    left[:, :32] = 1.0
    with attach(pipe.transformer, pm, ident, mask=left):
        half = run(pipe, prompt)
    assert (half - plain).abs().max() > 1e-4 and (half - full).abs().max() > 1e-4


@torch.no_grad()
def test_id_file_round_trips_between_comfyui_nodes_and_diffusers(tiny, tmp_path):
    from conftest import setup_comfyui

    setup_comfyui()
    import_pack()
    import folder_paths

    from comfyui_pulid_flux.nodes.id_io import LoadID, SaveID

    pipe, pm = tiny
    ident = DT.tiny_identity(pm)
    old = folder_paths.get_output_directory()
    folder_paths.set_output_directory(str(tmp_path))
    try:
        from comfyui_pulid_flux.pulid.embedding import IDEmbedding as ComfyID

        SaveID.execute(ComfyID(tokens=ident.tokens, uncond=ident.uncond, meta={"from": "comfyui"}), "rt/comfy")
        saved = sorted(tmp_path.rglob("*.safetensors"))
        assert len(saved) == 1
        loaded = load_id(saved[0])  # ComfyUI -> diffusers
        assert torch.equal(loaded.tokens, ident.tokens) and torch.equal(loaded.uncond, ident.uncond)
        assert loaded.meta["from"] == "comfyui"
        mine = tmp_path / "pulid_ids" / "from_diffusers.safetensors"
        save_id(loaded, mine)  # diffusers -> ComfyUI
        back = LoadID.execute("pulid_ids/from_diffusers.safetensors [output]")[0]
        assert torch.equal(back.tokens, ident.tokens) and torch.equal(back.uncond, ident.uncond)
    finally:
        folder_paths.set_output_directory(old)
    with attach(pipe.transformer, pm, ident):
        a = run(pipe, "a portrait photo of a person")
    with attach(pipe.transformer, pm, loaded):
        assert torch.equal(run(pipe, "a portrait photo of a person"), a)


@torch.no_grad()
def test_model_cpu_offload(tiny):
    """FluxPipeline.enable_model_cpu_offload (accelerate's hooks; execution device cpu on this GPU-less box): the
    adapter's hooks and tables go along, true CFG included, with the same result as without offload."""
    pipe, pm = tiny
    ident, prompt = DT.tiny_identity(pm), "a portrait photo of a person"
    kw = dict(negative_prompt="blurry", true_cfg_scale=2.0, num_inference_steps=3)
    with attach(pipe.transformer, pm, ident, start_step=1):
        ref = run(pipe, prompt, **kw)
    offloaded = DT.tiny_pipeline()
    offloaded.set_progress_bar_config(disable=True)
    offloaded.enable_model_cpu_offload(device="cpu")
    with attach(offloaded.transformer, pm, ident, start_step=1) as a:
        got = run(offloaded, prompt, **kw)
        assert a.table.weight_device == torch.device("cpu")
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
    assert hasattr(offloaded.transformer, "_hf_hook")  # accelerate's offload hook really was there


def test_clear_errors(tiny, tmp_path):
    pipe, pm = tiny
    ident = DT.tiny_identity(pm)
    with pytest.raises(ValueError, match="start_step"):
        attach(pipe.transformer, pm, ident, start_step=-1)
    with pytest.raises(ValueError, match="tokens"):
        attach(pipe.transformer, pm, IDEmbedding(tokens=torch.zeros(1, 4, 7)))
    other = DT.tiny_transformer()
    other_pm = DT.tiny_pulid_model(other)
    other_pm.pulid_ca = other_pm.pulid_ca[:-1]
    with pytest.raises(ValueError, match="cross-attentions"):
        attach(pipe.transformer, other_pm, ident)
    for folded in (True, False):  # finite tokens that overflow the tables (the ComfyUI Apply's check, shared)
        with pytest.raises(ValueError, match=r"largest \|value\| 1e\+30\) overflow the ID tables"):
            attach(pipe.transformer, pm, IDEmbedding(tokens=ident.tokens * 0 + 1e30, uncond=ident.uncond), folded=folded)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in pipe.transformer.modules())
    (tmp_path / "antelopev2").mkdir()
    (tmp_path / "antelopev2" / "glintr100.onnx").write_bytes(b"")
    missing = missing_model_files(tmp_path / "antelopev2", tmp_path / "facexlib", tmp_path / "eva.pt")
    names = [p.rsplit("/", 1)[-1] for p in missing]
    assert names == ["scrfd_10g_bnkps.onnx", "parsing_bisenet.pth", "detection_Resnet50_Final.pth", "eva.pt"]
    with pytest.raises(FileNotFoundError) as e:
        encode_images(pm, torch.zeros(1, 64, 64, 3), antelopev2_dir=tmp_path / "antelopev2",
                      facexlib_dir=tmp_path / "facexlib", eva_clip_file=tmp_path / "eva.pt")
    assert all(p in str(e.value) for p in missing)
