"""End to end through a real ComfyUI server (0.3.64 or 0.33.0, whichever COMFYUI_ROOT is) over HTTP.

One server per session (tests/_e2e/fixtures.py) with the pack symlinked into a throw-away base directory,
tiny random-weight Flux / CLIP-L / AE and tiny PuLID / EVA / antelopev2 / facexlib files in their real
formats, mapped in by an extra_model_paths.yaml that already defines the pack's folder keys. Each graph is
POSTed to /prompt, followed on /ws, read back from /history and /view.
"""

from __future__ import annotations

import numpy as np
import pytest
from _e2e.harness import (
    INCOMPLETE_PACK,
    NO_FACE_IMAGE,
    TINY_SIZE,
    WRONG_CHECKPOINT,
    nodes_of,
    without_pulid,
)

pytest_plugins = ["_e2e.fixtures"]
pytestmark = [pytest.mark.e2e, pytest.mark.comfyui]


def _fast(api: dict) -> dict:
    """Align on insightface's landmarks: skips facexlib's RetinaFace (the slowest step on 2 CPU cores). The
    shipped workflows keep the official facexlib source in test_shipped_workflow_renders."""
    return _set(api, "PuLIDFluxID_EncodeIdentity", align_source="insightface")


def _set(api: dict, class_type: str, **inputs) -> dict:
    for k in nodes_of(api, class_type):
        api[k]["inputs"].update(inputs)
    return api


def test_pack_loads_with_its_model_folders(e2e):
    info = e2e.object_info
    # models/pulid of the base dir (the pack's default) AND the yaml's pulid path, which the yaml defined
    # before the pack registered the key: both kept, with the extension filter reset
    pulid = info["PuLIDFluxID_ModelLoader"]["input"]["required"]["pulid_file"][1]["options"]
    assert set(pulid) == {"pulid_flux_tiny.safetensors", WRONG_CHECKPOINT}
    packs = info["PuLIDFluxID_FaceAnalysisLoader"]["input"]["required"]["model_pack"][1]["options"]
    assert {"antelopev2", INCOMPLETE_PACK} <= set(packs)
    assert "eva02_clip_tiny.pt" in info["PuLIDFluxID_EvaClipLoader"]["input"]["required"]["eva_file"][1]["options"]


# two_people last: the plain-graph test right after it follows two chained applies
@pytest.mark.parametrize("workflow", ["pulid_flux_basic", "pulid_flux_multi_reference", "pulid_flux_true_cfg",
                                      "pulid_flux_two_people"])
def test_shipped_workflow_renders(e2e, workflow):
    api = e2e.api(workflow)
    res = e2e.run(api)
    img = e2e.image(res)
    assert img.shape == (TINY_SIZE, TINY_SIZE, 3)
    assert not np.array_equal(img, e2e.baseline), "PuLID at weight 1 must change the image"
    encodes = nodes_of(api, "PuLIDFluxID_EncodeIdentity")
    assert encodes and set(encodes) <= res.executed_nodes | res.cached_nodes
    ran = set(encodes) & res.executed_nodes
    for node in ran:  # the progress bar over references reached the UI
        steps = [d for t, d in res.messages if t == "progress" and str(d.get("node")) == node]
        assert steps and steps[-1]["value"] == steps[-1]["max"] >= 2, steps
        assert [d["value"] for d in steps] == sorted(d["value"] for d in steps)


def test_plain_graph_after_pulid_equals_fresh_server(e2e):
    if not e2e.last_sampled_with_pulid:  # normally the shipped workflows just ran; else sample one now
        e2e.run(_fast(e2e.api("pulid_flux_two_people")))
    assert e2e.last_sampled_with_pulid
    res = e2e.run(e2e.baseline_api)
    sampler = nodes_of(e2e.baseline_api, "KSampler")[0]
    assert sampler in res.executed_nodes, "the plain graph must be sampled again, not served from the cache"
    assert np.array_equal(e2e.image(res), e2e.baseline), "a PuLID graph left something behind in the model"


def test_weight_zero_equals_graph_without_pulid_and_only_apply_reruns(e2e):
    api = _fast(e2e.api("pulid_flux_basic"))
    assert without_pulid(api) == e2e.baseline_api  # the baseline is this very graph minus the pack nodes
    first = e2e.run(_set(api, "PuLIDFluxID_Apply", weight=1.0))
    w1 = e2e.image(first)
    second = e2e.run(_set(api, "PuLIDFluxID_Apply", weight=0.5))
    encode = nodes_of(api, "PuLIDFluxID_EncodeIdentity")[0]
    assert encode in second.cached_nodes and encode not in second.executed_nodes, (
        "only the weight changed: the encode node must come from the cache")
    assert nodes_of(api, "PuLIDFluxID_Apply")[0] in second.executed_nodes
    w0 = e2e.image(e2e.run(_set(api, "PuLIDFluxID_Apply", weight=0.0)))
    assert np.array_equal(w0, e2e.baseline), "weight 0 must give the pixels of the graph without PuLID"
    assert not np.array_equal(w1, e2e.baseline)


def test_saved_id_is_reused_without_face_models(e2e):
    api = _fast(e2e.api("pulid_flux_basic"))
    encode = nodes_of(api, "PuLIDFluxID_EncodeIdentity")[0]
    api["900"] = {"class_type": "PuLIDFluxID_SaveID", "inputs": {"identity": [encode, 0], "filename_prefix": "e2e/me"}}
    first = e2e.run(api)
    direct = e2e.image(first)
    options = e2e.server.get_json("/object_info/PuLIDFluxID_LoadID")["PuLIDFluxID_LoadID"]["input"]["required"]
    saved = [o for o in options["image"][1]["options"] if o.startswith("pulid_ids/e2e/me_")]
    assert saved, options
    # the saved name reaches the UI (ui.PreviewText): in the 'executed' message and in the queue's history
    shown = [d["output"]["text"] for t, d in first.messages if t == "executed" and str(d.get("node")) == "900"]
    assert shown == [[saved[-1]]] and first.history["outputs"]["900"]["text"] == [saved[-1]], (shown, saved)
    assert (e2e.base / "output" / "pulid_ids" / "e2e" / saved[-1].split("/")[-1].split(" ")[0]).is_file()
    reuse = {k: v for k, v in api.items() if not v["class_type"].startswith("PuLIDFluxID_") or
             v["class_type"] in ("PuLIDFluxID_Apply", "PuLIDFluxID_ModelLoader")}
    reuse = {k: v for k, v in reuse.items() if v["class_type"] not in ("LoadImage", "PreviewImage")}
    reuse["901"] = {"class_type": "PuLIDFluxID_LoadID", "inputs": {"image": saved[-1]}}
    apply = nodes_of(reuse, "PuLIDFluxID_Apply")[0]
    reuse[apply]["inputs"]["identity"] = ["901", 0]
    assert not [k for k, v in reuse.items() if "Face" in v["class_type"] or "Eva" in v["class_type"]]
    assert np.array_equal(e2e.image(e2e.run(reuse)), direct)


def _expect_error(e2e, api, node_type: str, *needles: str, res=None) -> None:
    res = res or e2e.run(api, expect="error")
    assert res.status == "error" and res.error["node_type"] == node_type, res.error
    message = res.error["exception_message"]
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    # the server is still fine: the next prompt succeeds (a new seed, so it really samples, not a cache hit)
    _check_next_prompt(e2e)


_seeds = iter(range(1000, 2000))


def _check_next_prompt(e2e) -> None:
    api = _set(_fast(e2e.api("pulid_flux_basic")), "KSampler", seed=next(_seeds))
    ok = e2e.run(api)
    assert nodes_of(api, "KSampler")[0] in ok.executed_nodes
    assert e2e.image(ok).shape == (TINY_SIZE, TINY_SIZE, 3)


def test_image_without_face_is_an_actionable_error(e2e):
    api = _set(_fast(e2e.api("pulid_flux_basic")), "LoadImage", image=NO_FACE_IMAGE)
    _expect_error(e2e, api, "PuLIDFluxID_EncodeIdentity", "no face found in reference image 0", "Use a photo")


def test_missing_model_file_names_file_and_source(e2e):
    api = _set(_fast(e2e.api("pulid_flux_basic")), "PuLIDFluxID_FaceAnalysisLoader", model_pack=INCOMPLETE_PACK)
    _expect_error(e2e, api, "PuLIDFluxID_FaceAnalysisLoader", "glintr100.onnx", INCOMPLETE_PACK,
                  "huggingface.co/DIAMONIK7777/antelopev2", "install.py --models --only insightface --folder ")


def test_wrong_checkpoint_names_the_right_file(e2e):
    api = _set(_fast(e2e.api("pulid_flux_basic")), "PuLIDFluxID_ModelLoader", pulid_file=WRONG_CHECKPOINT)
    _expect_error(e2e, api, "PuLIDFluxID_ModelLoader", WRONG_CHECKPOINT, "not a PuLID-Flux checkpoint",
                  "pulid_flux_v0.9.1.safetensors")


def test_uninstalled_model_file_names_folder_and_source(e2e):
    api = _set(_fast(e2e.api("pulid_flux_basic")), "PuLIDFluxID_ModelLoader", pulid_file="pulid_flux_v0.9.1.safetensors")
    res = e2e.server.run_prompt(api)
    if res.status == "rejected":  # a ComfyUI that validates V3 combo values refuses it before running
        assert "pulid_flux_v0.9.1.safetensors" in str(res.error["node_errors"]), res.error
        _check_next_prompt(e2e)
    else:
        _expect_error(e2e, api, "PuLIDFluxID_ModelLoader", "pulid_flux_v0.9.1.safetensors",
                      str(e2e.base / "models" / "pulid"), "huggingface.co/guozinan/PuLID", res=res)
