"""Config, the full-size architecture, checkpoint loading with its error messages, and the loader's file reader."""

from __future__ import annotations

import json
import math
import pickle

import pytest
import torch
from conftest import GOLDEN_DIR, import_pack, setup_comfyui

import_pack()
from _writers import load_pulid, save_pulid_file  # noqa: E402

from comfyui_pulid_flux.pulid.config import FLUX_DEV, PulidFluxConfig, ca_layout  # noqa: E402
from comfyui_pulid_flux.pulid.model import PulidCheckpointError, PulidFluxModel  # noqa: E402

# Narrow, with the official head widths (what a state dict cannot tell; the loader assumes them).
TINY = PulidFluxConfig(flux_double_blocks=3, flux_single_blocks=5, flux_hidden=64, ca_heads=1, id_dim=32,
                       encoder_dim=32, encoder_heads=1, num_id_queries=32, mapping_hidden=24, arcface_dim=16,
                       clip_embed_dim=8, vit_width=12)


def test_flux_dev_layout_is_official():
    layout = FLUX_DEV.layout
    assert FLUX_DEV.num_ca == math.ceil(19 / 2) + math.ceil(38 / 4) == 20
    assert sorted(layout.double) == list(range(0, 19, 2))
    assert sorted(layout.single) == list(range(0, 38, 4))
    # every CA module is used exactly once, doubles first, in block order
    order = [layout.double[i] for i in sorted(layout.double)] + [layout.single[i] for i in sorted(layout.single)]
    assert order == list(range(FLUX_DEV.num_ca))
    assert FLUX_DEV.id_in_dim == 1280


def test_layout_plus_one_rule_matches_golden_hook_points():
    meta = json.loads((GOLDEN_DIR / "flux_patched.json").read_text())
    p, iv = meta["flux_params"], meta["intervals"]
    layout = ca_layout(p["depth"], p["depth_single_blocks"], iv["double"], iv["single"])
    hooks = {**{ca: f"double_blocks[{b}]" for b, ca in layout.double.items()},
             **{ca: f"single_blocks[{b}]" for b, ca in layout.single.items()}}
    assert {str(k): v for k, v in hooks.items()} == meta["ca_index_to_hook_point"]
    assert layout.num_ca == meta["pulid_ca_constructor"]["count"]


def test_layout_rejects_nonsense():
    with pytest.raises(ValueError, match="intervals"):
        ca_layout(19, 38, 0, 4)


def test_full_size_model_on_meta_matches_official_key_list():
    expected = json.loads((GOLDEN_DIR / "pulid_flux_v0.9.1.keys.json").read_text())
    model = PulidFluxModel.from_config(FLUX_DEV, device="meta")
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert got == expected
    assert all(p.device.type == "meta" for p in model.parameters())  # no 1 GB allocation


def _tiny_model(dtype=torch.float32, seed=0) -> PulidFluxModel:
    torch.manual_seed(seed)
    model = PulidFluxModel.from_config(TINY)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_tiny_checkpoint_roundtrip(tmp_path, dtype):
    model = _tiny_model(dtype)
    path = tmp_path / "pulid_tiny.safetensors"
    save_pulid_file(model, path)
    loaded = load_pulid(path)
    assert loaded.num_ca == TINY.num_ca and loaded.id_dim == TINY.id_dim and loaded.hidden_size == TINY.flux_hidden
    assert loaded.encoder_args == model.encoder_args and loaded.ca_args == model.ca_args
    for k, v in model.state_dict().items():
        assert loaded.state_dict()[k].dtype == dtype
        assert torch.equal(loaded.state_dict()[k], v), k
    assert not any(p.requires_grad for p in loaded.parameters())
    as_f32 = load_pulid(path, dtype=torch.float32)
    assert all(p.dtype == torch.float32 for p in as_f32.parameters())


def _write(tmp_path, sd, name="bad.safetensors"):
    from safetensors.torch import save_file

    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


def test_missing_key_is_named(tmp_path):
    sd = _tiny_model().state_dict()
    del sd["pulid_ca.1.to_out.weight"]
    with pytest.raises(PulidCheckpointError, match=r"bad.safetensors .*Missing key.*pulid_ca\.1\.to_out\.weight"):
        load_pulid(_write(tmp_path, sd))


def test_unexpected_key_is_named(tmp_path):
    sd = _tiny_model().state_dict()
    sd["pulid_ca.0.extra.weight"] = torch.zeros(2)
    with pytest.raises(PulidCheckpointError, match=r"Unexpected key.*pulid_ca\.0\.extra\.weight"):
        load_pulid(_write(tmp_path, sd))


def test_foreign_prefix_is_named(tmp_path):
    sd = _tiny_model().state_dict()
    sd["double_blocks.0.img_attn.qkv.weight"] = torch.zeros(2)
    with pytest.raises(PulidCheckpointError, match=r"unexpected keys outside.*double_blocks"):
        load_pulid(_write(tmp_path, sd))


def test_wrong_shape_is_named(tmp_path):
    sd = _tiny_model().state_dict()
    sd["pulid_ca.2.to_kv.weight"] = sd["pulid_ca.2.to_kv.weight"][:, :-1].clone()
    with pytest.raises(PulidCheckpointError, match=r"size mismatch for pulid_ca\.2\.to_kv\.weight"):
        load_pulid(_write(tmp_path, sd))


def test_not_a_pulid_checkpoint(tmp_path):
    path = _write(tmp_path, {"visual.trunk.cls_token": torch.zeros(1, 1, 8)}, "eva.safetensors")
    with pytest.raises(PulidCheckpointError, match=r"eva.safetensors is not a PuLID-Flux checkpoint.*visual\.trunk\.cls_token"):
        load_pulid(path)


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_fp8_file_is_refused(tmp_path, dtype):
    path = tmp_path / "pulid_fp8.safetensors"
    save_pulid_file(_tiny_model(), path, dtype=dtype)
    with pytest.raises(PulidCheckpointError, match=rf"pulid_fp8.safetensors stores its weights in {dtype}.*bf16 release"):
        load_pulid(path)


# --- the loader's file reader (ComfyUI's load_torch_file, wrapped) ---------------------------------------------


@pytest.fixture(scope="module")
def read_weights():
    setup_comfyui()
    from comfyui_pulid_flux.nodes.loaders import read_weights

    return read_weights


def test_reader_reads_safetensors_and_weights_only_pickles(tmp_path, read_weights):
    model = _tiny_model()
    save_pulid_file(model, tmp_path / "a.safetensors")
    torch.save(model.state_dict(), tmp_path / "a.pt")
    for name in ("a.safetensors", "a.pt"):
        sd = read_weights(str(tmp_path / name))
        assert sd.keys() == model.state_dict().keys()
        assert all(torch.equal(sd[k], v) for k, v in model.state_dict().items())


def test_reader_errors(tmp_path, read_weights):
    path = tmp_path / "pulid_flux_v0.9.1.safetensors"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"pulid_flux_v0.9.1.safetensors is empty \(0 bytes\).*download it again"):
        read_weights(str(path))
    save_pulid_file(_tiny_model(), path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"could not be read as a safetensors file.*truncated.*download it again"):
        read_weights(str(path))
    torch.save(_tiny_model().state_dict(), path)  # a pickle under a .safetensors name
    with pytest.raises(ValueError, match=r"could not be read as a safetensors file.*of another format"):
        read_weights(str(path))
    pt = tmp_path / "pulid.pt"
    torch.save(_tiny_model().state_dict(), pt)
    pt.write_bytes(pt.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"could not be read as a weights-only PyTorch file.*truncated"):
        read_weights(str(pt))


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_reader_refuses_a_pickle_with_code(tmp_path, read_weights, capsys):
    path = tmp_path / "pulid_evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"pulid_ca.0.to_q.weight": _Evil()}, f)
    with pytest.raises(ValueError, match=r"weights-only PyTorch file.*holds code besides tensors"):
        read_weights(str(path))
    assert "this must never run" not in capsys.readouterr().out
