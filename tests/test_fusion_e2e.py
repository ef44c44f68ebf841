"""Bad identity input through the HTTP API, as a user meets it: non-finite fusion weights are refused by name,
finite weights whose sum overflows still give a real image, and a saved ID holding NaN / inf is refused at
load with the file named; the server serves the next prompt."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _e2e.harness import TINY_SIZE, nodes_of
from conftest import import_pack

import_pack()
from comfyui_pulid_flux.pulid.embedding import FORMAT  # noqa: E402

pytest_plugins = ["_e2e.fixtures"]
pytestmark = [pytest.mark.e2e, pytest.mark.comfyui]


def _multi(e2e, **encode):
    api = e2e.api("pulid_flux_multi_reference")
    for k in nodes_of(api, "PuLIDFluxID_EncodeIdentity"):
        api[k]["inputs"].update(align_source="insightface", **encode)  # insightface landmarks: faster on CPU
    return api


def _error(e2e, api, node_type: str, *needles: str) -> None:
    res = e2e.run(api, expect="error")
    assert res.error["node_type"] == node_type, res.error
    for needle in needles:
        assert needle in res.error["exception_message"], res.error["exception_message"]


def test_non_finite_fusion_weights_are_refused(e2e):
    _error(e2e, _multi(e2e, fusion="weighted", fusion_weights="inf, 1, 1"), "PuLIDFluxID_EncodeIdentity",
           "'inf, 1, 1'", "not a finite number")
    _error(e2e, _multi(e2e, fusion="weighted", fusion_weights="1, nan, 1"), "PuLIDFluxID_EncodeIdentity",
           "not a finite number")


def test_overflowing_fusion_weights_still_give_an_image(e2e):
    res = e2e.run(_multi(e2e, fusion="weighted", fusion_weights="1e308, 1e308, 1e308"))
    img = e2e.image(res)
    assert img.shape == (TINY_SIZE, TINY_SIZE, 3) and img.max() > 0  # a NaN ID decodes to a black image
    assert not np.array_equal(img, e2e.baseline)


@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_saved_id_with_non_finite_tokens_is_refused_at_load(e2e, bad):
    from safetensors.torch import save_file

    folder = e2e.base / "input" / "pulid_ids"
    folder.mkdir(parents=True, exist_ok=True)
    name = f"corrupt_{bad}.safetensors"
    tokens = torch.randn(1, 32, 8)
    tokens[0, 3, 1] = float(bad)
    save_file({"tokens": tokens}, str(folder / name), metadata={"format": FORMAT, "meta": "{}"})
    api = _multi(e2e)
    api["901"] = {"class_type": "PuLIDFluxID_LoadID", "inputs": {"image": f"pulid_ids/{name} [input]"}}
    apply = nodes_of(api, "PuLIDFluxID_Apply")[0]
    api[apply]["inputs"]["identity"] = ["901", 0]
    _error(e2e, api, "PuLIDFluxID_LoadID", name, "NaN or infinite", "encode the reference images again")
    ok = e2e.run(_multi(e2e))  # the server is fine afterwards
    assert e2e.image(ok).shape == (TINY_SIZE, TINY_SIZE, 3)


def test_joint_fusion_renders_and_differs_from_mean(e2e):
    mean = e2e.image(e2e.run(_multi(e2e, fusion="mean")))
    joint = e2e.image(e2e.run(_multi(e2e, fusion="joint")))
    assert joint.shape == (TINY_SIZE, TINY_SIZE, 3) and joint.max() > 0
    assert not np.array_equal(joint, mean) and not np.array_equal(joint, e2e.baseline)
