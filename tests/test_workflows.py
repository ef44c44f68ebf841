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
        if n["type"] in workflow_specs.MODEL_GROUPS:  # no widget names these files: all of the loader's group
            files = [name for name, _u, _d in workflow_specs.FACE_MODELS[workflow_specs.MODEL_GROUPS[n["type"]]]]
            assert files
        models = {m["name"]: m for m in props.get("models", [])}
        assert sorted(models) == sorted(files), f"{n['type']}: properties.models must name exactly {files}"
        for m in models.values():  # the frontend downloads url into models/<directory>/<name>
            assert m["url"].startswith(("https://huggingface.co/", "https://github.com/")), m
            assert m["url"].endswith("/" + m["name"]) and m["directory"], m
            assert "black-forest-labs" not in m["url"], f"{m['url']}: the BFL repository is gated"


def test_model_directories_are_folders_the_server_knows(e2e):
    folders = set(e2e.server.get_json("/models"))
    for name in EXPECTED:
        for n in load_workflow(name)["nodes"]:
            for m in n.get("properties", {}).get("models", []):
                top = m["directory"].split("/")[0]  # insightface/models/antelopev2: below a model folder
                assert top in folders, f"{name}: {m['directory']!r} is not in a model folder ({sorted(folders)})"


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
    """app_flux.py / flux/sampling.py denoise defaults: guidance 4, 28 steps, id weight 1, with the documented
    photoreal start_step 4; the documented true-CFG example (docs/pulid_for_flux.md): guidance 1, true_cfg 5 with a
    negative prompt, start_step 1."""
    for name in ("pulid_flux_basic", "pulid_flux_multi_reference", "pulid_flux_two_people"):
        wf = load_workflow(name)
        assert {w[0] for w in _widgets(wf, "FluxGuidance")} == {4}, name
        assert [(w[2], w[3]) for w in _widgets(wf, "KSampler")] == [(28, 1)], name  # steps, cfg
        # weight 1, start_step 4: the official choice for photoreal prompts (docs/pulid_for_flux.md), said in the note
        assert {(w[0], w[3]) for w in _widgets(wf, "PuLIDFluxID_Apply")} == {(1, 4)}, name
        assert "start_step 4" in _note(wf), name
    wf = load_workflow("pulid_flux_true_cfg")
    assert {w[0] for w in _widgets(wf, "FluxGuidance")} == {1}
    assert [(w[2], w[3]) for w in _widgets(wf, "KSampler")] == [(28, 5)]
    assert [(w[0], w[3], w[4]) for w in _widgets(wf, "PuLIDFluxID_Apply")] == [(1, 1, "uncond_id")]
    texts = [w[0] for w in _widgets(wf, "CLIPTextEncode")]
    assert len(texts) == 2 and all(texts), "true CFG needs a positive and a negative prompt"


def _note(wf: dict) -> str:
    return next(n["widgets_values"][0] for n in wf["nodes"] if n["type"] == "MarkdownNote")


@pytest.mark.parametrize("name", EXPECTED)
def test_workflow_guides_the_user(name):
    """Groups in the order a user works, every node but the note in exactly one; the note's first line says what
    to change; helper nodes carry titles; the photo is the example face the pack ships (never a missing file)."""
    wf = load_workflow(name)
    titles = [g["title"] for g in sorted(wf["groups"], key=lambda g: g["bounding"][0])]
    assert [t.split(".")[0] for t in titles] == ["1", "2", "3", "4"], titles
    assert [t.split(". ")[1].split()[0] for t in titles] == ["Models", "Your", "Prompt", "Sample"], titles

    def inside(n, g):
        x, y, w, h = g["bounding"]
        return x <= n["pos"][0] and n["pos"][0] + n["size"][0] <= x + w and y <= n["pos"][1] <= y + h

    for n in wf["nodes"]:
        where = [g["title"] for g in wf["groups"] if inside(n, g)]
        assert where == ([] if n["type"] == "MarkdownNote" else where[:1]) and (where or n["type"] == "MarkdownNote"), \
            f"{name}: node {n['id']} {n.get('title', n['type'])} is in groups {where}"
    first = _note(wf).splitlines()[0]
    assert first.startswith("**Change:**") and "photo" in first, first
    if name == "pulid_flux_likeness_sweep":
        assert "six full samplings" in first, first
    helpers = ("LoadImage", "ImageBatch", "SolidMask", "MaskComposite", "LatentBatch", "PreviewImage")
    untitled = [n["type"] for n in wf["nodes"] if n["type"] in helpers and not n.get("title")]
    assert not untitled, f"{name}: untitled helper nodes {untitled}"
    images = {n["widgets_values"][0] for n in wf["nodes"] if n["type"] == "LoadImage"}
    assert images == {workflow_specs.EXAMPLE_FACE} and (WORKFLOWS / workflow_specs.EXAMPLE_FACE).is_file(), images


def test_the_pack_places_its_example_face_in_input_once(tmp_path):
    """When ComfyUI loads the pack, its example face is copied into input/ under the name the workflows use,
    and never over a file of that name (the user's own, or an earlier copy)."""
    from conftest import import_pack, setup_comfyui

    setup_comfyui()
    import_pack()
    import folder_paths

    from comfyui_pulid_flux import nodes

    old = folder_paths.get_input_directory()
    folder_paths.set_input_directory(str(tmp_path / "input"))
    try:
        nodes.place_example_face()
        dst = tmp_path / "input" / workflow_specs.EXAMPLE_FACE
        assert dst.read_bytes() == (WORKFLOWS / workflow_specs.EXAMPLE_FACE).read_bytes()
        dst.write_bytes(b"the user's own file")
        nodes.place_example_face()
        assert dst.read_bytes() == b"the user's own file"
    finally:
        folder_paths.set_input_directory(old)
