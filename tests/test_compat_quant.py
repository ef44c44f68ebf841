"""PuLID on quantised and reduced-precision Flux: city96's GGUF loader (Q8_0 and the K-quant Q4_K, files
written here with the `gguf` package), ComfyUI's fp8 UNET weight dtypes with manual cast, and fp16 weights
(what --fp16-unet loads). Each meets the contract of `_compat.check_combination`."""

from __future__ import annotations

import pytest
import torch
from conftest import COMFYUI_ROOT, NO_COMFYUI, setup_comfyui

if COMFYUI_ROOT is None:
    pytest.skip(NO_COMFYUI, allow_module_level=True)
setup_comfyui()

import _compat as C  # noqa: E402
import _tiny_flux as T  # noqa: E402
import gguf  # noqa: E402  (requirements-test.txt)

QTYPES = ["Q8_0", "Q4_K"]


@pytest.fixture(scope="module")
def source():
    """The full-precision tiny Flux the GGUF files are made from."""
    return T.tiny_flux_patcher(seed=3, **C.GGUF_FLUX)


@pytest.fixture(scope="module")
def gguf_files(source, tmp_path_factory):
    folder = tmp_path_factory.mktemp("diffusion_models")
    sd = source.model.diffusion_model.state_dict()
    out = {}
    for q in QTYPES:
        path = folder / f"flux1-tiny-{q}.gguf"
        types = C.write_gguf(path, sd, q)
        assert list(types.values()).count(q) >= len(types) // 3, types  # most weights really are quantised
        out[q] = path
    return out


@pytest.fixture(scope="module")
def kit256():
    mp = pytest.MonkeyPatch()
    yield C.make_kit(mp, hidden=C.GGUF_FLUX["hidden_size"])
    mp.undo()


def test_q4_k_writer_agrees_with_gguf_dequantizer():
    import numpy as np

    x = np.random.default_rng(0).standard_normal((4, 512)).astype(np.float32) * 0.05
    y = gguf.quants.dequantize(C.quantize_q4_k(x), gguf.GGMLQuantizationType.Q4_K)
    assert y.shape == x.shape
    blocks_x, blocks_err = x.reshape(-1, 32), np.abs(y - x).reshape(-1, 32)
    step = (blocks_x.max(1) - np.minimum(blocks_x.min(1), 0)) / 15  # one 4-bit step of each sub-block
    assert (blocks_err.max(1) <= step * 0.75 + 1e-4).all()  # half a step plus the 6-bit scale rounding


@pytest.mark.parametrize("qtype", QTYPES)
def test_gguf_flux_with_pulid(source, gguf_files, kit256, qtype):
    model, route = C.gguf_flux_patcher(gguf_files[qtype])
    assert type(model).__name__ == "GGUFModelPatcher"
    qkv = model.model.diffusion_model.double_blocks[0].img_attn.qkv.weight
    assert getattr(qkv, "tensor_type", None) == getattr(gguf.GGMLQuantizationType, qtype)
    assert route == ("node" if C.comfy_version() >= (0, 4) else "steps")  # 0.33 detection sizes it: the real node
    ref = T.sample(source, steps=2)
    plain = T.sample(model, steps=2)
    assert float((plain - ref).norm() / ref.norm()) < 0.2, "the GGUF model is not the model it was made from"
    C.check_combination(lambda pulid: T.sample(model if pulid is None else pulid(model), steps=2), kit256)


@pytest.mark.parametrize("weight_dtype", [torch.float8_e4m3fn, torch.float8_e5m2], ids=["e4m3fn", "e5m2"])
def test_fp8_unet_weights_with_manual_cast(weight_dtype, monkeypatch):
    base = T.tiny_flux_patcher(weight_dtype=weight_dtype, manual_cast_dtype=torch.bfloat16)
    assert base.model.diffusion_model.double_blocks[0].img_attn.qkv.weight.dtype == weight_dtype
    kit = C.make_kit(monkeypatch)
    C.check_combination(lambda pulid: T.sample(base if pulid is None else pulid(base), steps=2, cfg=2.0), kit)


def test_fp16_unet_weights(monkeypatch):
    """--fp16-unet stores the weights in fp16; ComfyUI picks the compute dtype for the device."""
    import comfy.model_management as mm

    compute = mm.unet_manual_cast(torch.float16, mm.get_torch_device())
    for manual_cast in {compute, None}:
        base = T.tiny_flux_patcher(weight_dtype=torch.float16, manual_cast_dtype=manual_cast)
        C.check_combination(lambda pulid, b=base: T.sample(b if pulid is None else pulid(b), steps=2, cfg=2.0),
                            C.make_kit(monkeypatch))
