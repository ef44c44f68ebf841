"""Config, the full-size architecture, and checkpoint loading with its error messages."""

from __future__ import annotations

import json
import math
import pickle

import pytest
import torch
from conftest import GOLDEN_DIR, import_pack

import_pack()
from comfyui_pulid_flux.pulid import (  # noqa: E402
    FLUX_DEV,
    PulidCheckpointError,
    PulidFluxConfig,
    PulidFluxModel,
    ca_layout,
    load_pulid_file,
    save_pulid_file,
)
from comfyui_pulid_flux.pulid.checkpoint import read_state_dict  # noqa: E402

TINY = PulidFluxConfig(flux_double_blocks=3, flux_single_blocks=5, flux_hidden=64, ca_dim_head=16, ca_heads=2,
                       id_dim=32, encoder_dim=32, encoder_dim_head=8, encoder_heads=4, num_id_queries=32,
                       mapping_hidden=24, arcface_dim=16, clip_embed_dim=8, vit_width=12)


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
    loaded = load_pulid_file(path)
    assert loaded.num_ca == TINY.num_ca and loaded.id_dim == TINY.id_dim and loaded.hidden_size == TINY.flux_hidden
    assert loaded.encoder_args == model.encoder_args and loaded.ca_args == model.ca_args
    for k, v in model.state_dict().items():
        assert loaded.state_dict()[k].dtype == dtype
        assert torch.equal(loaded.state_dict()[k], v), k
    assert not any(p.requires_grad for p in loaded.parameters())
    as_f32 = load_pulid_file(path, dtype=torch.float32)
    assert all(p.dtype == torch.float32 for p in as_f32.parameters())


def test_pickle_checkpoint_loads_weights_only(tmp_path):
    model = _tiny_model()
    path = tmp_path / "pulid_tiny.pt"
    torch.save(model.state_dict(), path)
    from comfyui_pulid_flux.pulid.model import UNSHAPED_KEYS

    loaded = PulidFluxModel.from_state_dict(read_state_dict(path)[0], source=path.name,
                                            config_overrides={k: model.spec()[k] for k in UNSHAPED_KEYS})
    assert torch.equal(loaded.pulid_ca[0].to_q.weight, model.pulid_ca[0].to_q.weight)


def _write(tmp_path, sd, name="bad.safetensors"):
    from safetensors.torch import save_file

    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path),
              metadata={"pulid_flux_config": json.dumps(_tiny_model().spec())})
    return path


def test_missing_key_is_named(tmp_path):
    sd = _tiny_model().state_dict()
    del sd["pulid_ca.1.to_out.weight"]
    with pytest.raises(PulidCheckpointError, match=r"missing.*pulid_ca\.1\.to_out\.weight"):
        load_pulid_file(_write(tmp_path, sd))


def test_unexpected_key_is_named(tmp_path):
    sd = _tiny_model().state_dict()
    sd["pulid_ca.0.extra.weight"] = torch.zeros(2)
    with pytest.raises(PulidCheckpointError, match=r"unexpected.*pulid_ca\.0\.extra\.weight"):
        load_pulid_file(_write(tmp_path, sd))


def test_foreign_prefix_is_named(tmp_path):
    sd = _tiny_model().state_dict()
    sd["double_blocks.0.img_attn.qkv.weight"] = torch.zeros(2)
    with pytest.raises(PulidCheckpointError, match=r"unexpected keys outside.*double_blocks"):
        load_pulid_file(_write(tmp_path, sd))


def test_wrong_shape_is_named(tmp_path):
    sd = _tiny_model().state_dict()
    sd["pulid_ca.2.to_kv.weight"] = sd["pulid_ca.2.to_kv.weight"][:, :-1].clone()
    with pytest.raises(PulidCheckpointError, match=r"mis-shaped.*pulid_ca\.2\.to_kv\.weight"):
        load_pulid_file(_write(tmp_path, sd))


def test_not_a_pulid_checkpoint(tmp_path):
    path = _write(tmp_path, {"visual.trunk.cls_token": torch.zeros(1, 1, 8)}, "eva.safetensors")
    with pytest.raises(PulidCheckpointError, match=r"not a PuLID-Flux checkpoint.*visual\.trunk\.cls_token.*guozinan"):
        load_pulid_file(path)


def test_truncated_file(tmp_path):
    path = tmp_path / "pulid_tiny.safetensors"
    save_pulid_file(_tiny_model(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(PulidCheckpointError, match=r"truncated.*Download it again"):
        load_pulid_file(path)


def test_empty_file(tmp_path):
    path = tmp_path / "pulid_flux_v0.9.1.safetensors"
    path.write_bytes(b"")
    with pytest.raises(PulidCheckpointError, match=r"empty \(0 bytes\).*Download it again"):
        load_pulid_file(path)


def test_missing_file(tmp_path):
    with pytest.raises(PulidCheckpointError, match="does not exist"):
        load_pulid_file(tmp_path / "nope.safetensors")


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickle_with_code_is_refused(tmp_path):
    path = tmp_path / "pulid_evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"pulid_ca.0.to_q.weight": _Evil()}, f)
    with pytest.raises(PulidCheckpointError, match=r"not loaded for safety.*safetensors"):
        load_pulid_file(path)


def test_pickle_renamed_as_safetensors(tmp_path):
    path = tmp_path / "pulid.safetensors"
    torch.save(_tiny_model().state_dict(), path)
    with pytest.raises(PulidCheckpointError, match=r"pickled PyTorch file"):
        load_pulid_file(path)


def test_truncated_pickle(tmp_path):
    path = tmp_path / "pulid.pt"
    torch.save(_tiny_model().state_dict(), path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(PulidCheckpointError, match=r"truncated or not a checkpoint"):
        load_pulid_file(path)
