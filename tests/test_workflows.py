"""The shipped workflows: UI format, thumbnails, and a check against the live /object_info of the e2e server.

Offline: every workflow parses, has its .jpg, uses only core and pack node types and the real model names.
Against the server: GET /workflow_templates lists them, the static file is served, every node type exists,
widget values match the input order and types, and each converts to an API prompt giving every required
input.
"""

from __future__ import annotations

import json
import re

import pytest
from _e2e import ui_to_api, workflow_specs
from _e2e.harness import FREE_COMBOS, WORKFLOWS, load_workflow, workflow_names
from _e2e.server import PACK_DIR_NAME
from conftest import ROOT

pytest_plugins = ["_e2e.fixtures"]

EXPECTED = ["pulid_flux_basic", "pulid_flux_likeness_sweep", "pulid_flux_multi_reference", "pulid_flux_true_cfg",
            "pulid_flux_two_people"]
REAL_NAMES = {"UNETLoader": "flux1-dev.safetensors", "VAELoader": "ae.safetensors",
              "PuLIDFluxID_ModelLoader": "pulid_flux_v0.9.1.safetensors",
              "PuLIDFluxID_EvaClipLoader": "EVA02_CLIP_L_336_psz14_s6B.pt"}


def test_the_four_workflows_ship_with_thumbnails():
    assert workflow_names() == EXPECTED
    for name in EXPECTED:
        wf = load_workflow(name)
        assert {"last_node_id", "last_link_id", "nodes", "links", "groups", "config", "extra", "version"} <= set(wf)
        assert (WORKFLOWS / f"{name}.jpg").read_bytes()[:3] == b"\xff\xd8\xff", f"{name}.jpg is not a JPEG"
        types = {n["type"] for n in wf["nodes"]}
        assert {"PuLIDFluxID_ModelLoader", "PuLIDFluxID_EncodeIdentity", "PuLIDFluxID_Apply"} <= types
        for n in wf["nodes"]:
            if n["type"] in REAL_NAMES:
                assert n["widgets_values"][0] == REAL_NAMES[n["type"]], (name, n["type"])
        links = {lk[0]: lk for lk in wf["links"]}
        for n in wf["nodes"]:  # links are consistent both ways
            for inp in n.get("inputs", []):
                if inp.get("link") is not None:
                    assert links[inp["link"]][3] == n["id"]
            for out in n.get("outputs", []):
                for lid in out.get("links") or []:
                    assert links[lid][1] == n["id"]


def test_templates_endpoint_lists_and_serves_them(e2e):
    listed = e2e.server.get_json("/workflow_templates")
    assert sorted(listed[PACK_DIR_NAME]) == EXPECTED, listed
    for name in EXPECTED:
        served = e2e.server.get_json(f"/api/workflow_templates/{PACK_DIR_NAME}/{name}.json")
        assert served == load_workflow(name)


@pytest.mark.parametrize("name", EXPECTED)
def test_workflow_matches_object_info_and_converts(e2e, name):
    info = e2e.object_info
    wf = load_workflow(name)
    core = {t for t, v in info.items() if not v.get("python_module", "").startswith("custom_nodes")}
    for n in wf["nodes"]:
        assert n["type"] in core | ui_to_api.VIRTUAL or n["type"].startswith("PuLIDFluxID_"), \
            f"{n['type']} is neither core nor ours"
    assert ui_to_api.check_widgets(wf, info, free_combos=FREE_COMBOS) == []
    api = ui_to_api.convert(wf, info)
    assert len(api) == len([n for n in wf["nodes"] if n["type"] not in ui_to_api.VIRTUAL])
    for nid, node in api.items():
        required = info[node["class_type"]]["input"].get("required", {})
        missing = [k for k in required if k not in node["inputs"]]
        assert not missing, f"node {nid} {node['class_type']} lacks {missing}"
    json.dumps(api)  # a valid prompt body


def _widgets(wf: dict, node_type: str) -> list:
    return [n["widgets_values"] for n in wf["nodes"] if n["type"] == node_type]


@pytest.mark.parametrize("name", EXPECTED)
def test_loaders_offer_their_model_files_and_carry_registry_ids(name):
    wf = load_workflow(name)
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    for n in wf["nodes"]:
        if n["type"] in ui_to_api.VIRTUAL:
            continue
        props = n["properties"]
        ours = n["type"].startswith("PuLIDFluxID_")
        assert props.get("cnr_id") == ("pulid-flux-id" if ours else "comfy-core") and props.get("ver"), (n["type"], props)
        if ours:
            assert props["ver"] == version, f"{n['type']}: ver {props['ver']!r}, pyproject.toml says {version!r}"
        files = [v for v in n["widgets_values"] if isinstance(v, str) and v.endswith((".safetensors", ".pt"))]
        models = {m["name"]: m for m in props.get("models", [])}
        assert sorted(models) == sorted(files), f"{n['type']}: properties.models must name exactly {files}"
        for m in models.values():  # the frontend downloads url into models/<directory>/<name>
            assert m["url"].startswith("https://huggingface.co/") and m["url"].endswith("/" + m["name"]), m
            assert m["directory"]


def test_model_directories_are_folders_the_server_knows(e2e):
    folders = set(e2e.server.get_json("/models"))
    for name in EXPECTED:
        for n in load_workflow(name)["nodes"]:
            for m in n.get("properties", {}).get("models", []):
                assert m["directory"] in folders, f"{name}: {m['directory']!r} is not a model folder ({sorted(folders)})"


@pytest.mark.parametrize("name", EXPECTED)
def test_instructions_are_a_markdown_note_on_the_canvas(name):
    wf = load_workflow(name)
    notes = [n for n in wf["nodes"] if n["type"] == "MarkdownNote"]
    assert len(notes) == 1 and set(wf["extra"]) <= {"ds", "frontendVersion"}, "instructions belong on the canvas"
    text = notes[0]["widgets_values"][0]
    for m in workflow_specs.MODELS:  # every file the graph needs, with its folder
        assert m in text and f"models/{workflow_specs.MODELS[m][1]}/" in text, m
    assert "antelopev2" in text and "models/facexlib/" in text


def test_settings_follow_the_official_demo():
    """app_flux.py / flux/sampling.py denoise defaults: guidance 4, 28 steps, id weight 1; the documented true-CFG
    example (docs/pulid_for_flux.md): guidance 1, true_cfg 5 with a negative prompt, start_step 1."""
    for name in ("pulid_flux_basic", "pulid_flux_multi_reference", "pulid_flux_two_people"):
        wf = load_workflow(name)
        assert {w[0] for w in _widgets(wf, "FluxGuidance")} == {4}, name
        assert [(w[2], w[3]) for w in _widgets(wf, "KSampler")] == [(28, 1)], name  # steps, cfg
        assert {(w[0], w[3]) for w in _widgets(wf, "PuLIDFluxID_Apply")} == {(1, 0)}, name  # weight, start_step
    wf = load_workflow("pulid_flux_true_cfg")
    assert {w[0] for w in _widgets(wf, "FluxGuidance")} == {1}
    assert [(w[2], w[3]) for w in _widgets(wf, "KSampler")] == [(28, 5)]
    assert [(w[0], w[3], w[4]) for w in _widgets(wf, "PuLIDFluxID_Apply")] == [(1, 1, "uncond_id")]
    texts = [w[0] for w in _widgets(wf, "CLIPTextEncode")]
    assert len(texts) == 2 and all(texts), "true CFG needs a positive and a negative prompt"
