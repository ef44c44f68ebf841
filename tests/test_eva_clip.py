"""EVA02-CLIP vision tower: golden parity with the official eva_clip tower, key mapping, state-dict errors,
the tower check of the loader.

Golden tests take every size from the eva_visual sidecar and load its weights (official eva_clip key
layout) through the production key mapping and strict load.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import GOLDEN_DIR, bf16_bound, import_pack, rel_l2

import_pack()
from _tiny_faces import cached, make_tiny_eva_checkpoint, tiny_eva_config  # noqa: E402
from _writers import eva_config_from_official, load_eva, read_file  # noqa: E402

from comfyui_pulid_flux.encoders import EvaCheckpointError  # noqa: E402
from comfyui_pulid_flux.encoders.eva_clip import (  # noqa: E402
    EVA02_CLIP_L_336,
    EvaVisionConfig,
    EvaVisionTower,
    build_eva_clip,
    check_pulid_tower,
    official_to_timm_key,
)

EVA_ATOL, EVA_RTOL = 1e-4, 1e-5  # EVA hidden states reach ~20 in magnitude


def golden_tower(g, dtype=torch.float32) -> EvaVisionTower:
    return load_eva(GOLDEN_DIR / g.meta["weights_file"], config=eva_config_from_official(g.meta["model_config"]),
                    dtype=dtype)


@pytest.fixture(scope="module")
def tower32(golden):
    return golden_tower(golden("eva_visual"))


def test_config_from_sidecar_matches_derived(golden):
    g = golden("eva_visual")
    cfg = eva_config_from_official(g.meta["model_config"])
    d = g.meta["derived"]
    assert cfg.num_heads == d["num_heads"] and cfg.width // cfg.num_heads == d["head_dim"]
    assert cfg.mlp_hidden == d["mlp_hidden"] and cfg.num_tokens == d["tokens"]
    full = eva_config_from_official(g.meta["official_full_config"])
    assert full == EVA02_CLIP_L_336
    assert full.num_tokens == 577 and full.mlp_hidden == 2730


@torch.no_grad()
def test_eva_visual_golden_parity(golden, tower32):
    g = golden("eva_visual")
    tower = tower32
    pooled, hidden = tower(g.io["in.image"])
    torch.testing.assert_close(pooled, g.io["out.pooled"], atol=EVA_ATOL, rtol=EVA_RTOL)
    l2 = pooled / torch.norm(pooled, 2, dim=1, keepdim=True)
    torch.testing.assert_close(l2, g.io["out.pooled_l2"], atol=1e-6, rtol=1e-5)
    ref_hidden = g.seq("out.hidden")
    assert len(hidden) == len(ref_hidden) == len(tower.config.tap_blocks)
    for k, (h, ref) in enumerate(zip(hidden, ref_hidden)):
        assert h.shape == ref.shape, k
        torch.testing.assert_close(h, ref, atol=EVA_ATOL, rtol=EVA_RTOL, msg=f"hidden tap {k}")


@torch.no_grad()
def test_eva_rope_is_the_interpolated_official_grid(golden, tower32):
    """timm's RoPE cache = the official freqs_cos/sin buffers (grid 6 interpolated onto pt_hw_seq_len 4)."""
    g = golden("eva_visual")
    tower = tower32
    sin, cos = tower.trunk.rope.get_embed().chunk(2, dim=-1)  # timm RotaryEmbeddingCat: [sin, cos]
    torch.testing.assert_close(cos, g.io["out.rope_freqs_cos"], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(sin, g.io["out.rope_freqs_sin"], atol=1e-6, rtol=1e-6)


@torch.no_grad()
def test_eva_last_block_and_bf16(golden, tower32):
    g = golden("eva_visual")
    tower = tower32
    last = {}
    h = tower.trunk.blocks[-1].register_forward_hook(lambda m, a, out: last.setdefault("x", out))
    tower(g.io["in.image"])
    h.remove()
    torch.testing.assert_close(last["x"], g.io["out.tokens_last_block_raw"], atol=EVA_ATOL, rtol=EVA_RTOL)
    bf = golden_tower(g, dtype=torch.bfloat16)
    pooled, hidden = bf(g.io["in.image"].bfloat16())
    assert pooled.dtype == torch.bfloat16
    assert rel_l2(g.io["out.pooled"], pooled.float()) <= bf16_bound("eva_tiny_pooled_bf16_vs_fp32")
    assert rel_l2(g.seq("out.hidden")[-1], hidden[-1].float()) <= bf16_bound("eva_tiny_hidden4_bf16_vs_fp32")


def test_tower_uses_sdpa(golden, tower32, monkeypatch):
    g = golden("eva_visual")
    tower = tower32
    assert all(blk.attn.fused_attn for blk in tower.trunk.blocks)
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    with torch.no_grad():
        tower(g.io["in.image"][:1])
    assert len(calls) == tower.config.depth


def test_key_mapping_matches_official_table():
    table = json.loads((GOLDEN_DIR / "eva02_L336_official_to_openclip_keys.json").read_text())
    mapping = table["mapping"]
    assert len(mapping) == table["official_visual_keys"]
    for official, open_clip in mapping.items():
        timm = official_to_timm_key(official)
        assert (None if timm is None else "visual.trunk." + timm) == open_clip, official
    assert sum(v is None for v in mapping.values()) == table["num_dropped"]


def test_full_size_tower_keys_equal_mapped_official_keys():
    """The full EVA02-L-336 tower, built on the meta device (no 1.2 GB allocation), has exactly the mapped keys."""
    table = json.loads((GOLDEN_DIR / "eva02_L336_official_to_openclip_keys.json").read_text())
    tower = EvaVisionTower.empty(EVA02_CLIP_L_336)
    assert tower.trunk.patch_embed.proj.weight.is_meta
    model_keys = {"visual.trunk." + k for k in tower.trunk.state_dict()}
    mapped = {v for v in table["mapping"].values() if v is not None}
    assert model_keys == mapped
    assert len(model_keys) == table["open_clip_visual_keys"]
    n_params = sum(p.numel() for p in tower.parameters())
    assert n_params == 304_432_832  # EVA02-CLIP-L-14-336 vision tower, RoPE buffers excluded
    assert tower.config.num_tokens == 577


@pytest.mark.parametrize("layout,name", [("official", "eva.pt"), ("open_clip", "eva_oc.safetensors"),
                                         ("timm", "eva_timm.safetensors")])
def test_all_layouts_load_to_the_same_tower(layout, name):
    ref = load_eva(cached("eva_official.pt", make_tiny_eva_checkpoint))
    path = cached(name, make_tiny_eva_checkpoint, layout=layout)
    tower = load_eva(path)
    assert tower.config == tiny_eva_config()
    size = tower.config.image_size
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        p0, h0 = ref(x)
        p1, h1 = tower(x)
    assert torch.equal(p0, p1) and all(torch.equal(a, b) for a, b in zip(h0, h1))
    assert not any(p.requires_grad for p in tower.parameters())


def _official_sd():
    return read_file(cached("eva_official.pt", make_tiny_eva_checkpoint))


def test_official_extras_are_dropped():
    sd = _official_sd()
    sd["visual.rope.freqs_cos"] = torch.zeros(16, 64)
    sd["visual.blocks.0.attn.rope.freqs_sin"] = torch.zeros(16, 64)
    sd["text.transformer.resblocks.0.attn.in_proj_weight"] = torch.zeros(8, 8)
    sd["logit_scale"] = torch.tensor(4.6)
    tower = build_eva_clip(sd, "with_text.pt", dtype=torch.bfloat16)
    assert tower.trunk.patch_embed.proj.weight.dtype == torch.bfloat16


def test_missing_unexpected_and_misshaped_keys_are_named():
    sd = _official_sd()
    sd.pop("visual.blocks.3.mlp.w2.weight")
    sd["visual.blocks.0.attn.extra_gate"] = torch.zeros(3)
    with pytest.raises(EvaCheckpointError) as e:
        build_eva_clip(sd, "bad.pt")
    msg = str(e.value)
    assert "bad.pt" in msg and "blocks.3.mlp.fc1_x.weight" in msg and "Missing key" in msg
    assert "blocks.0.attn.extra_gate" in msg and "Unexpected key" in msg
    sd = _official_sd()
    sd["visual.blocks.5.attn.q_bias"] = torch.zeros(7)
    width = tiny_eva_config().width
    with pytest.raises(EvaCheckpointError, match=rf"blocks\.5\.attn\.q_proj\.bias: .*\[7\].*\[{width}\]"):
        build_eva_clip(sd, "shape.pt")


def test_wrong_model_checkpoints():
    with pytest.raises(EvaCheckpointError, match="HuggingFace CLIPVisionModel"):
        build_eva_clip({"vision_model.encoder.layers.0.mlp.fc1.weight": torch.zeros(4, 4)}, "clip_l.safetensors")
    with pytest.raises(EvaCheckpointError, match="PuLID checkpoint"):
        build_eva_clip({"pulid_encoder.latents": torch.zeros(1, 32, 8)}, "pulid.pt")


def test_the_loader_refuses_another_eva_naming_both():
    check_pulid_tower(EVA02_CLIP_L_336, "EVA02_CLIP_L_336_psz14_s6B.pt")
    check_pulid_tower(tiny_eva_config(), "tiny.pt")  # narrow, but the geometry the ID encoder's inputs need
    eva_l_224 = EvaVisionConfig(image_size=224)  # EVA02-CLIP-L-14 (224 px): same widths, 257 tokens instead of 577
    want = EVA02_CLIP_L_336
    with pytest.raises(EvaCheckpointError, match=rf"EVA02_CLIP_L_psz14_s4B.pt is an EVA-CLIP tower of 224 px, patch 14, "
                                                 rf"24 layers .* needs EVA02-CLIP-L-14-336: {want.image_size} px, "
                                                 rf"patch {want.patch_size}, {want.depth} layers"):
        check_pulid_tower(eva_l_224, "EVA02_CLIP_L_psz14_s4B.pt")
    with pytest.raises(EvaCheckpointError, match="12 layers"):
        check_pulid_tower(EvaVisionConfig(image_size=224, patch_size=16, width=768, depth=12, num_heads=12,
                                          mlp_hidden=2048, embed_dim=512, tap_blocks=(4, 8)), "EVA02-B-16.pt")
