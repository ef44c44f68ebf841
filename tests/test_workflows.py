"""The shipped workflows: UI format, thumbnails, and a check against the live /object_info of the e2e server.

Offline: every workflow parses, has its .jpg, uses only core and pack node types and the real model names.
Against the server: GET /workflow_templates lists them, the static file is served, every node type exists,
widget values match the input order and types, and each converts to an API prompt giving every required
input.
"""

from __future__ import annotations

import json

import pytest
from _e2e import ui_to_api
from _e2e.harness import FREE_COMBOS, WORKFLOWS, load_workflow, workflow_names
from _e2e.server import PACK_DIR_NAME

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
        assert n["type"] in core or n["type"].startswith("PuLIDFluxID_"), f"{n['type']} is neither core nor ours"
    assert ui_to_api.check_widgets(wf, info, free_combos=FREE_COMBOS) == []
    api = ui_to_api.convert(wf, info)
    assert len(api) == len(wf["nodes"])
    for nid, node in api.items():
        required = info[node["class_type"]]["input"].get("required", {})
        missing = [k for k in required if k not in node["inputs"]]
        assert not missing, f"node {nid} {node['class_type']} lacks {missing}"
    json.dumps(api)  # a valid prompt body
