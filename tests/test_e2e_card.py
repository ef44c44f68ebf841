"""The ID card over HTTP, on the real server of tests/_e2e (shared with test_e2e.py).

Save ID writes the card next to the .safetensors and shows it on the node; the card read back through /view,
uploaded through /upload/image (what a person dropping it on Load ID, an HTTP client, or an engine's media
sync does) and loaded by Load ID renders bit-identically to the encoded identity and to the saved file. Every
bad card ends in an execution_error naming the file and the fix, and the next prompt still renders.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _e2e.harness import TINY_SIZE, nodes_of
from test_id_card import bad_cards

pytest_plugins = ["_e2e.fixtures"]
pytestmark = [pytest.mark.e2e, pytest.mark.comfyui]

_seeds = iter(range(7000, 8000))


def _set(api: dict, class_type: str, **inputs) -> dict:
    for k in nodes_of(api, class_type):
        api[k]["inputs"].update(inputs)
    return api


def _encoded(e2e) -> dict:
    return _set(e2e.api("pulid_flux_basic"), "PuLIDFluxID_EncodeIdentity", align_source="insightface")


def _from_id(e2e, name: str) -> dict:
    """The basic graph with the face models, EVA and the encode replaced by Load ID(name)."""
    api = {k: v for k, v in _encoded(e2e).items() if not v["class_type"].startswith("PuLIDFluxID_")
           or v["class_type"] in ("PuLIDFluxID_Apply", "PuLIDFluxID_ModelLoader")}
    api = {k: v for k, v in api.items() if v["class_type"] not in ("LoadImage", "PreviewImage")}
    api["901"] = {"class_type": "PuLIDFluxID_LoadID", "inputs": {"image": name}}
    api[nodes_of(api, "PuLIDFluxID_Apply")[0]]["inputs"]["identity"] = ["901", 0]
    return api


@pytest.fixture(scope="module")
def saved(e2e):
    """Encode + Save ID once: (direct image, saved .safetensors name, card bytes read back through /view)."""
    api = _encoded(e2e)
    api["900"] = {"class_type": "PuLIDFluxID_SaveID",
                  "inputs": {"identity": [nodes_of(api, "PuLIDFluxID_EncodeIdentity")[0], 0],
                             "filename_prefix": "cards/alice"}}
    res = e2e.run(api)
    name = res.history["outputs"]["900"]["text"][0]
    shown = res.history["outputs"]["900"]["images"]  # the card is shown on the node
    assert len(shown) == 1 and shown[0]["filename"].endswith("_.png") and shown[0]["type"] == "output", shown
    card = e2e.server.view(shown[0])
    assert card.startswith(b"\x89PNG") and name.endswith(".safetensors [output]")
    return e2e.image(res), name, card


def test_card_uploaded_over_http_renders_as_the_encoded_identity(e2e, saved):
    direct, name, card = saved
    up = e2e.server.upload_image(card, "alice_card.png")
    assert up["name"] == "alice_card.png", up
    info = e2e.server.get_json("/object_info/PuLIDFluxID_LoadID")["PuLIDFluxID_LoadID"]["input"]["required"]["image"]
    assert info[1].get("image_upload") is True and "alice_card.png" in info[1]["options"], info
    api = _from_id(e2e, "alice_card.png")
    assert not [k for k, v in api.items() if "Face" in v["class_type"] or "Eva" in v["class_type"]]
    from_card = e2e.image(e2e.run(api))
    from_file = e2e.image(e2e.run(_from_id(e2e, name)))
    assert np.array_equal(from_card, direct) and np.array_equal(from_file, direct)


def _card_id_dim(card: bytes, tmp_path) -> int:
    from comfyui_pulid_flux.pulid.embedding import IDEmbedding

    (tmp_path / "c.png").write_bytes(card)
    return IDEmbedding.from_card(tmp_path / "c.png").id_dim


def _expect_error(e2e, api, node_type: str, *needles: str, check_next: bool = True) -> None:
    res = e2e.run(api, expect="error")
    assert res.error["node_type"] == node_type, res.error
    message = res.error["exception_message"]
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    if check_next:
        _check_next_prompt(e2e)


def _check_next_prompt(e2e) -> None:
    ok = e2e.run(_set(_from_id(e2e, "alice_card.png"), "KSampler", seed=next(_seeds)))  # the server is fine
    assert e2e.image(ok).shape == (TINY_SIZE, TINY_SIZE, 3)


def test_every_bad_card_is_a_clear_error_over_http(e2e, saved, tmp_path):
    e2e.server.upload_image(saved[2], "alice_card.png")
    id_dim = _card_id_dim(saved[2], tmp_path)
    for name, (data, words) in bad_cards(id_dim).items():
        assert e2e.server.upload_image(data, name)["name"] == name
        _expect_error(e2e, _from_id(e2e, name), "PuLIDFluxID_LoadID", name, *words, check_next=False)
    _check_next_prompt(e2e)  # after all of them (each error is caught per prompt)


def test_card_of_another_pulid_width_is_refused_at_apply(e2e, saved, tmp_path):
    from comfyui_pulid_flux.pulid.embedding import IDEmbedding

    id_dim = _card_id_dim(saved[2], tmp_path)
    other = IDEmbedding(tokens=torch.randn(1, 32, id_dim * 2), uncond=torch.zeros(1, 32, id_dim * 2))
    e2e.server.upload_image(other.to_card("wide"), "card_wide.png")
    _expect_error(e2e, _from_id(e2e, "card_wide.png"), "PuLIDFluxID_Apply", f"id_dim {id_dim * 2}", str(id_dim),
                  "encode it again")


def test_filename_prefix_of_300_characters(e2e):
    api = _encoded(e2e)
    api["900"] = {"class_type": "PuLIDFluxID_SaveID",
                  "inputs": {"identity": [nodes_of(api, "PuLIDFluxID_EncodeIdentity")[0], 0],
                             "filename_prefix": "p" * 300}}
    _expect_error(e2e, api, "PuLIDFluxID_SaveID", "filename_prefix", "300 bytes", "under 200")
