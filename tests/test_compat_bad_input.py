"""Bad input through the HTTP API, as a user would send it, with city96's GGUF loader installed next to the pack.

One ComfyUI server for this module (tests/_e2e harness) with the pack, ComfyUI-GGUF from $PULID_THIRDPARTY_DIR
in its custom_nodes/, and these files made for it: a tiny Wan 2.1 GGUF (another architecture), PuLID files
whose width or depth does not fit the tiny Flux, a PuLID file stored in fp8, and saved ID files whose tokens
hold NaN or inf. Each bad prompt must end in an execution_error whose message names the value and the fix,
and the next good prompt must still succeed (a new seed, so it really samples).
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from _e2e.harness import nodes_of

pytest_plugins = ["_e2e.fixtures"]
pytestmark = [pytest.mark.e2e, pytest.mark.comfyui]

WAN_GGUF = "wan2.1-tiny-Q8_0.gguf"
PULID_WIDE = "pulid_flux_tiny_hidden1024.safetensors"  # CA width 1024, the tiny Flux is 3072 wide
PULID_DEEP = "pulid_flux_tiny_3ca.safetensors"  # 3 CAs, the tiny Flux (1 double + 1 single block) takes 2
PULID_FP8 = "pulid_flux_tiny_fp8.safetensors"
ID_NAN, ID_INF = "id_nan.safetensors", "id_inf.safetensors"


def _pulid_variant(src, dst, *, width: int | None = None, extra_ca: bool = False, dtype=None) -> None:
    """Another PuLID file made from the tiny one (same encoder, so Encode runs): CA width cut to `width`, one
    more CA (a copy of the last), or every float tensor stored in `dtype`. The metadata is kept."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), "pt") as f:
        sd, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    hidden = max(v.shape[0] for k, v in sd.items() if k.startswith("pulid_ca.0.") and v.ndim == 1)
    if width is not None:
        for k, v in sd.items():
            if k.startswith("pulid_ca."):
                for d in range(v.ndim):
                    if v.shape[d] == hidden:
                        v = v.narrow(d, 0, width)
                sd[k] = v.contiguous()
    if extra_ca:
        last = max(int(k.split(".")[1]) for k in sd if k.startswith("pulid_ca."))
        sd.update({k.replace(f"pulid_ca.{last}.", f"pulid_ca.{last + 1}.", 1): v.clone()
                   for k, v in list(sd.items()) if k.startswith(f"pulid_ca.{last}.")})
    if dtype is not None:
        sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    save_file(sd, str(dst), metadata=metadata)


def _id_dim(pulid_file) -> int:
    """The ID token width of a PuLID file: the input width of its CAs' key/value projection."""
    from safetensors import safe_open

    with safe_open(str(pulid_file), "pt") as f:
        return next(f.get_slice(k).get_shape()[1] for k in f.keys()
                    if k.startswith("pulid_ca.0.") and "kv" in k and k.endswith("weight"))


def _wan_state_dict() -> dict:
    """A Wan 2.1 t2v diffusion model at dim 256 / 1 layer, shapes from ComfyUI's own WanModel."""
    import comfy.ldm.wan.model
    import comfy.ops
    from _e2e.comfy_models import random_state_dict

    with torch.device("meta"):
        wan = comfy.ldm.wan.model.WanModel(model_type="t2v", dim=256, ffn_dim=512, num_heads=2, num_layers=1,
                                           operations=comfy.ops.disable_weight_init)
    return random_state_dict({k: tuple(v.shape) for k, v in wan.state_dict().items()}, torch.float32, 5)


def _prepare(env, pulid_file) -> None:
    import _compat as C
    import comfy.model_detection
    from safetensors import safe_open
    from safetensors.torch import save_file

    from comfyui_pulid_flux.pulid.embedding import IDEmbedding

    C.unpack("gguf", env.base / "custom_nodes")
    models = env.base / "models"
    (models / "diffusion_models").mkdir(parents=True, exist_ok=True)
    sd = _wan_state_dict()
    assert comfy.model_detection.detect_unet_config(sd, "")["image_model"] == "wan2.1"
    C.write_gguf(models / "diffusion_models" / WAN_GGUF, sd, "Q8_0", arch="wan")
    _pulid_variant(pulid_file, models / "pulid" / PULID_WIDE, width=1024)
    _pulid_variant(pulid_file, models / "pulid" / PULID_DEEP, extra_ca=True)
    _pulid_variant(pulid_file, models / "pulid" / PULID_FP8, dtype=torch.float8_e4m3fn)
    ids = env.base / "input" / "pulid_ids"
    ids.mkdir(parents=True, exist_ok=True)
    id_dim = _id_dim(pulid_file)
    for name, bad in ((ID_NAN, float("nan")), (ID_INF, float("inf"))):
        # a good ID file as Save ID writes it, then one token value damaged in the file itself
        IDEmbedding(tokens=torch.randn(1, 4, id_dim), uncond=torch.zeros(1, 4, id_dim)).save(ids / name)
        with safe_open(str(ids / name), "pt") as f:
            tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
        tensors["tokens"][0, 1, 3] = bad
        save_file(tensors, str(ids / name), metadata=metadata)


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    from conftest import import_pack, setup_comfyui

    root = setup_comfyui()
    import_pack()
    from _e2e.cache import CACHE_DIR
    from _e2e.comfy_models import ensure_comfy_models
    from _e2e.harness import E2E
    from _e2e.pack_models import ensure_pack_models

    ensure_comfy_models(CACHE_DIR)
    pack = ensure_pack_models(CACHE_DIR)
    env = E2E(root, sys.executable, tmp_path_factory.mktemp("compat_base"), CACHE_DIR)
    _prepare(env, pack["pulid"])
    try:
        env.start()
        assert "UnetLoaderGGUF" in env.object_info, f"ComfyUI-GGUF did not load:\n{env.server.tail(60)}"
        yield env
    finally:
        env.stop()


def _set(api: dict, class_type: str, **inputs) -> dict:
    for k in nodes_of(api, class_type):
        api[k]["inputs"].update(inputs)
    return api


def _basic(srv) -> dict:
    return _set(srv.api("pulid_flux_basic"), "PuLIDFluxID_EncodeIdentity", align_source="insightface")


_seeds = iter(range(5000, 6000))


def _expect_error(srv, api, node_types, *needles: str) -> str:
    res = srv.run(api, expect="error")
    node_types = {node_types} if isinstance(node_types, str) else set(node_types)
    assert res.error["node_type"] in node_types, res.error
    message = res.error["exception_message"]
    for needle in needles:
        assert needle.lower() in message.lower(), f"{needle!r} not in {message!r}"
    ok = srv.run(_set(_basic(srv), "KSampler", seed=next(_seeds)))  # the server is still fine
    assert srv.image(ok).shape[-1] == 3
    return message


def test_gguf_model_of_another_architecture(srv):
    api = _basic(srv)
    unet = nodes_of(api, "UNETLoader")[0]
    api[unet] = {"class_type": "UnetLoaderGGUF", "inputs": {"unet_name": WAN_GGUF}}
    _expect_error(srv, api, "PuLIDFluxID_Apply", "Flux.1", "WAN", "Load a Flux.1")


@pytest.mark.parametrize("pulid_file,shown", [(PULID_WIDE, "1024"), (PULID_DEEP, "3 ")])
def test_flux_geometry_that_does_not_fit_the_pulid_file(srv, pulid_file, shown):
    api = _set(_basic(srv), "PuLIDFluxID_ModelLoader", pulid_file=pulid_file)
    # the Flux side (3072 wide, 1 + 1 blocks), the PuLID side's value, the file and the fix
    _expect_error(srv, api, "PuLIDFluxID_Apply", "3072", shown, pulid_file, "made for this")


def test_fp8_pulid_file(srv):
    api = _set(_basic(srv), "PuLIDFluxID_ModelLoader", pulid_file=PULID_FP8)
    _expect_error(srv, api, "PuLIDFluxID_ModelLoader", PULID_FP8, "float8_e4m3fn", "pulid_flux_v0.9.1.safetensors")


def _multi(srv, weights: str) -> dict:
    api = srv.api("pulid_flux_multi_reference")
    return _set(api, "PuLIDFluxID_EncodeIdentity", align_source="insightface", fusion="weighted",
                fusion_weights=weights)


@pytest.mark.parametrize("weights", ["inf, 1, 1", "1, nan, 1"])
def test_non_finite_fusion_weights(srv, weights):
    message = _expect_error(srv, _multi(srv, weights), "PuLIDFluxID_EncodeIdentity", "fusion_weights", weights)
    assert "finite" in message or "non-negative numbers" in message, message  # says what a valid weight is


def test_fusion_weights_whose_sum_overflows_are_normalised(srv):
    huge = srv.image(srv.run(_multi(srv, "1e308, 1e308, 1e308")))  # the sum overflows float64 and float32
    same = srv.image(srv.run(_multi(srv, "1, 1, 1")))
    assert np.array_equal(huge, same), "equal weights must give the equal-weight identity, however large"


@pytest.mark.parametrize("id_file,value", [(ID_NAN, "nan"), (ID_INF, "inf")])
def test_saved_id_with_non_finite_tokens(srv, id_file, value):
    api = _basic(srv)
    keep = {"PuLIDFluxID_Apply", "PuLIDFluxID_ModelLoader"}
    api = {k: v for k, v in api.items() if not v["class_type"].startswith("PuLIDFluxID_") or v["class_type"] in keep}
    api = {k: v for k, v in api.items() if v["class_type"] not in ("LoadImage", "PreviewImage")}
    api["901"] = {"class_type": "PuLIDFluxID_LoadID", "inputs": {"image": f"pulid_ids/{id_file} [input]"}}
    api[nodes_of(api, "PuLIDFluxID_Apply")[0]]["inputs"]["identity"] = ["901", 0]
    message = _expect_error(srv, api, {"PuLIDFluxID_LoadID", "PuLIDFluxID_Apply"}, value, "finite")
    assert id_file in message or "encode" in message.lower(), message  # names the file, or says to encode again
