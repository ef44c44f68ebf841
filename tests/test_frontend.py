"""The shipped workflows in the real ComfyUI frontend, in headless Chromium (Chrome DevTools Protocol).

For the frontend this ComfyUI pins and for the newest ``comfyui-frontend-package`` on PyPI (installed with
pip --target under the cache, served with ``--front-end-root``), a server runs with the pack and the tiny
models, linked in under the real file names the workflows use. Each workflow is loaded through
``app.loadGraphData`` as a dropped file would be, then: no dialog (missing nodes, models, inputs), every node
type is registered, every widget shows the value stored in the JSON. Then, through the page's own graph API,
the sampler is shrunk to 2 steps at 64 px and the T5 DualCLIPLoader swapped for CLIP-L (the tiny T5 cannot
exist), the graph is queued with ``app.queuePrompt`` and the image the UI receives is read back.
The basic workflow's screenshot is written next to the server log (the README's picture is made by
tests/_e2e/make_workflows.py). With the model files hidden, the basic workflow makes the frontend list every
file its loaders name. Without Chromium the tests skip with one line.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from _e2e import ui_to_api
from _e2e.browser import Browser, find_chromium
from _e2e.harness import PACK, load_workflow, pixels, reference_images
from _e2e.server import PACK_DIR_NAME, ComfyServer
from _e2e.tools import ToolUnavailable, pip_target
from _e2e.workflow_specs import MODELS, T5XXL, WORKFLOWS

pytestmark = [pytest.mark.e2e]  # the fixture skips without ComfyUI
CHROMIUM = find_chromium()
if CHROMIUM is None:
    pytest.skip("Chromium not found: apt-get install -y chromium (or set PULID_CHROMIUM)", allow_module_level=True)

TINY, STEPS = 64, 2
READY = "!!(window.app && window.app.graph && window.app.canvas && window.app.api)"
DIALOGS = """[...document.querySelectorAll('.p-dialog, [role=dialog]')]
  .filter(d => d.offsetParent !== null || d.getClientRects().length).map(d => d.innerText.trim().slice(0, 400))"""

LOAD = """(async () => {
  await app.loadGraphData(%s, true, true, %s);
  await new Promise(r => setTimeout(r, 1500));
  const g = app.rootGraph ?? app.graph, nodes = g.nodes ?? g._nodes;
  return {
    dialogs: %s,
    unregistered: nodes.filter(n => !LiteGraph.registered_node_types[n.type]).map(n => n.type),
    widgets: Object.fromEntries(nodes.map(n => [n.id, (n.widgets || []).map(w => [w.name, w.value])])),
  };
})()"""

SHRINK = """(() => {
  const g = app.rootGraph ?? app.graph, nodes = [...(g.nodes ?? g._nodes)];
  const set = (n, name, v) => { const w = n.widgets.find(w => w.name === name); w.value = v; w.callback?.(v); };
  const link = id => g.links instanceof Map ? g.links.get(id) : g.links[id];
  for (const n of nodes) {
    if (n.type === 'EmptySD3LatentImage') { set(n, 'width', %(size)d); set(n, 'height', %(size)d); }
    if (n.type === 'KSampler') set(n, 'steps', %(steps)d);
    if (n.type === 'DualCLIPLoader') {
      const c = LiteGraph.createNode('CLIPLoader');
      g.add(c);
      c.pos = [n.pos[0], n.pos[1]];
      set(c, 'clip_name', %(clip)s); set(c, 'type', 'sd3');
      for (const id of [...(n.outputs[0].links || [])]) {
        const l = link(id);
        c.connect(0, g.getNodeById(l.target_id), l.target_slot);
      }
      g.remove(n);
    }
  }
  return true;
})()"""

QUEUE = """(async () => {
  window.__pulid = {done: null, images: [], text: {}};
  app.api.addEventListener('executed', e => {
    for (const im of (e.detail?.output?.images || [])) window.__pulid.images.push(im);
    if (e.detail?.output?.text) window.__pulid.text[String(e.detail.node)] = e.detail.output.text;
  });
  app.api.addEventListener('execution_success', e => { window.__pulid.done = {ok: true}; });
  app.api.addEventListener('execution_error', e => { window.__pulid.done = {ok: false, error: e.detail}; });
  await app.queuePrompt(0, 1);
  return true;
})()"""

FIT = """(() => {  // the whole graph in view, below the top bar and right of the side bar
  const g = app.rootGraph ?? app.graph, nodes = g.nodes ?? g._nodes, ds = app.canvas.ds, title = 30;
  const x0 = Math.min(...nodes.map(n => n.pos[0])), y0 = Math.min(...nodes.map(n => n.pos[1] - title));
  const x1 = Math.max(...nodes.map(n => n.pos[0] + n.size[0])), y1 = Math.max(...nodes.map(n => n.pos[1] + n.size[1]));
  const left = 70, top = 80, w = innerWidth - left - 20, h = innerHeight - top - 20;
  ds.scale = Math.min(w / (x1 - x0), h / (y1 - y0));
  ds.offset = [left / ds.scale - x0, top / ds.scale - y0];
  app.canvas.setDirty(true, true);
  return ds.scale;
})()"""

ADD_SAVE_ID = """(() => {
  const g = app.rootGraph ?? app.graph, nodes = g.nodes ?? g._nodes;
  const enc = nodes.find(n => n.type === 'PuLIDFluxID_EncodeIdentity');
  const s = LiteGraph.createNode('PuLIDFluxID_SaveID');
  g.add(s);
  s.pos = [enc.pos[0], enc.pos[1] + 420];
  s.widgets.find(w => w.name === 'filename_prefix').value = %s;
  enc.connect(0, s, 0);
  return String(s.id);
})()"""

WAIT = "(() => window.__pulid.done ?? ((d => d.length ? {ok: false, dialogs: d} : null)(%s)))()" % DIALOGS


def _tiny_files(cache: Path) -> dict[str, Path]:
    from _e2e.comfy_models import ensure_comfy_models
    from _e2e.pack_models import ensure_pack_models

    comfy, pack = ensure_comfy_models(cache), ensure_pack_models(cache)
    clip_l = comfy["clip_l"]
    by_dir = {"diffusion_models": comfy["unet"], "vae": comfy["vae"], "pulid": pack["pulid"],
              "clip_vision": pack["eva"]}
    # the real names the workflows use -> tiny files; T5 gets CLIP-L only so its name is listed (see SHRINK)
    return {name: (clip_l if directory == "text_encoders" else by_dir[directory]) for name, (_url, directory)
            in MODELS.items()}


@pytest.fixture(scope="session", params=["pinned", "newest"])
def frontend(request, tmp_path_factory):
    from conftest import import_pack, setup_comfyui

    root = setup_comfyui()
    import_pack()
    from _e2e.cache import CACHE_DIR
    from _e2e.pack_models import model_paths_yaml_sections

    extra, label = [], "pinned by this ComfyUI"
    if request.param == "newest":
        try:
            target = pip_target("frontend-newest", ["comfyui-frontend-package"], max_age_s=86400)
        except ToolUnavailable as e:
            pytest.skip(f"newest comfyui-frontend-package cannot be installed here: {e}")
        extra = ["--front-end-root", str(target / "comfyui_frontend_package" / "static")]
        label = "newest " + next(p.name for p in target.glob("comfyui_frontend_package-*.dist-info"))
    base = tmp_path_factory.mktemp(f"frontend_{request.param}")
    for name, src in _tiny_files(CACHE_DIR).items():
        link = base / "models" / MODELS[name][1] / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(src)
    settings = base / "user" / "default" / "comfy.settings.json"  # a returning user: no first-run template dialog
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text(json.dumps({"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False,
                                    "Comfy.Workflow.Persist": False,  # each test starts from its own graph
                                    "LiteGraph.Canvas.MinFontSizeForLOD": 1,  # readable text in the screenshot
                                    "LiteGraph.Canvas.LowQualityRenderingZoomThreshold": 0.1}))
    server = ComfyServer(root, sys.executable, base, model_paths=model_paths_yaml_sections(CACHE_DIR),
                         packs={PACK_DIR_NAME: PACK}, extra_args=extra)
    browser = None
    try:
        server.start()
        for name, data in reference_images().items():
            server.upload_image(data, name)
        browser = Browser(CHROMIUM, base / "chromium")
        yield {"server": server, "browser": browser, "object_info": server.get_json("/object_info"), "base": base,
               "label": label, "kind": request.param}
    finally:
        if browser is not None:
            browser.close()
        server.stop()


def _expected_widgets(node: dict, object_info: dict) -> list[tuple[str, object]]:
    if node["type"] in ui_to_api.VIRTUAL:
        return [(None, v) for v in node["widgets_values"]]
    values, out, i = node["widgets_values"], [], 0
    for name, spec in ui_to_api.widget_names(object_info[node["type"]]):
        out.append((name, values[i]))
        i += 1 + ui_to_api.extra_values(spec)
    return out


def _open(page, frontend: dict, name: str) -> tuple[dict, str]:
    page.goto(frontend["server"].url + "/", width=1920, height=1080)
    page.wait_for(READY, 120, f"frontend ({frontend['label']}) ready")
    loaded = page.js(LOAD % (json.dumps(load_workflow(name)), json.dumps(f"{name}.json"), DIALOGS))
    return loaded, f"{name} in the frontend {frontend['label']}"


def _shrink(page) -> None:
    clip = next(n for n, (_u, d) in MODELS.items() if d == "text_encoders" and n != T5XXL)
    page.js(SHRINK % {"size": TINY, "steps": STEPS, "clip": json.dumps(clip)})


def _queue(page, server, where: str) -> None:
    page.js(QUEUE)
    done = page.wait_for(WAIT, 600, f"{where}: the queued prompt")
    assert done["ok"], f"{where}: {json.dumps(done)[:3000]}\n--- server log ---\n{server.tail(40)}"


@pytest.mark.parametrize("name", list(WORKFLOWS))
def test_workflow_loads_shows_its_values_and_renders_from_the_ui(frontend, name):
    server, wf = frontend["server"], load_workflow(name)
    page = frontend["browser"].page()
    try:
        loaded, where = _open(page, frontend, name)
        assert loaded["dialogs"] == [], f"{where}: dialog(s) after loading: {loaded['dialogs']}"
        assert loaded["unregistered"] == [], f"{where}: missing node types {loaded['unregistered']}"
        for node in wf["nodes"]:
            shown = loaded["widgets"].get(str(node["id"]))
            assert shown is not None, f"{where}: node {node['id']} {node['type']} is not in the graph ({list(loaded['widgets'])})"
            for i, (wname, value) in enumerate(_expected_widgets(node, frontend["object_info"])):
                got = shown[i][1] if wname is None else dict(shown).get(wname, "<no widget>")
                assert got == value, f"{where}: node {node['id']} {node['type']}.{wname} shows {got!r}, JSON {value!r}"
        if name == "pulid_flux_basic" and frontend["kind"] == "pinned":
            page.js(FIT)
            time.sleep(0.5)  # one frame
            page.screenshot(frontend["base"] / "screenshot_basic.png")  # for a look; the README's: make_workflows.py
        _shrink(page)
        _queue(page, server, where)
        images = page.js("window.__pulid.images")
        saved = [im for im in images if im.get("type") == "output"]
        assert saved, f"{where}: the UI received no output image ({images})"
        shapes = {im["filename"].rsplit("_", 2)[0]: pixels(server.view(im)).shape for im in saved}
        if name == "pulid_flux_likeness_sweep":  # the contact sheet of the tiny renders and the chart
            from conftest import import_pack

            chart_w, chart_h = import_pack().likeness.sheet.CHART_SIZE
            assert shapes.pop("pulid_sweep_chart") == (chart_h, chart_w, 3), f"{where}: {shapes}"
            sheet = shapes.pop("pulid_sweep_sheet")
            assert sheet[0] > TINY and sheet[1] > TINY and not shapes, f"{where}: {sheet}, {shapes}"
            # web/node_text.js draws the Face Similarity summary (its ui text) on the node
            node = next(n["id"] for n in wf["nodes"] if n["type"] == "PuLIDFluxID_FaceSimilarity")
            sent = page.js("window.__pulid.text").get(str(node))
            shown = page.js(f"(app.rootGraph ?? app.graph).getNodeById({node}).pulidText ?? null")
            assert sent and shown == sent[0], f"{where}: the similarity node shows {shown!r}, sent {sent!r}"
        else:
            assert set(shapes.values()) == {(TINY, TINY, 3)}, f"{where}: {shapes}"
    finally:
        page.close()


# The missing-models list: a dialog (pinned frontends), or the "Missing Models" section of the issues panel that
# the toast's "View details" opens (newer ones). Not the whole page: the note on the canvas names the files too.
MISSING = """(() => {
  const seen = e => e.offsetParent !== null || e.getClientRects().length;
  const dialogs = [...document.querySelectorAll('.p-dialog, [role=dialog]')].filter(seen).map(d => d.innerText);
  if (dialogs.some(t => t.includes('Missing Models'))) return dialogs.join('\\n');
  const details = [...document.querySelectorAll('button')].find(b => seen(b) && b.innerText.trim() === 'View details');
  if (details) { details.click(); return null; }
  const boxes = [...document.querySelectorAll('div, section')].filter(e => seen(e) && e.innerText
    && e.innerText.includes('Missing Models') && e.innerText.includes('Download'));
  return boxes.length ? boxes.reduce((a, b) => (a.innerText.length <= b.innerText.length ? a : b)).innerText : null;
})()"""


def test_missing_models_dialog_lists_every_file_of_the_basic_workflow(frontend):
    """With the model files absent, opening the basic workflow makes the frontend list every file a loader's widget
    names, with its download (the face models, which no widget names, come from install.py --models)."""
    files = {name: frontend["base"] / "models" / MODELS[name][1] / name for name in MODELS}
    hidden = {name: path.with_name("." + name) for name, path in files.items()}  # hidden files are not listed
    wanted = [m["name"] for n in load_workflow("pulid_flux_basic")["nodes"]
              for m in n.get("properties", {}).get("models", []) if m["name"] in n["widgets_values"]]
    assert sorted(wanted) == sorted(MODELS), wanted
    for name in files:  # before the page loads: its /object_info and model lists then lack the files
        files[name].rename(hidden[name])
    page = frontend["browser"].page()
    try:
        page.goto(frontend["server"].url + "/", width=1920, height=1080)
        page.wait_for(READY, 120, f"frontend ({frontend['label']}) ready")
        page.js(LOAD % (json.dumps(load_workflow("pulid_flux_basic")), json.dumps("pulid_flux_basic.json"), "[]"))
        text = page.wait_for(MISSING, 30, f"the missing-models dialog ({frontend['label']})")
        missing = [name for name in wanted if name not in text]
        assert not missing, f"frontend {frontend['label']}: the dialog lacks {missing}:\n{text}"
    finally:
        page.close()
        for name in files:
            hidden[name].rename(files[name])


def test_save_id_shows_the_saved_name_on_the_node(frontend):
    """web/node_text.js draws the name the node sends to the UI (ui.PreviewText) on the node."""
    page = frontend["browser"].page()
    try:
        _, where = _open(page, frontend, "pulid_flux_basic")
        _shrink(page)
        node = page.js(ADD_SAVE_ID % json.dumps(f"ui/{frontend['kind']}"))
        _queue(page, frontend["server"], where)
        sent = page.js("window.__pulid.text")
        assert node in sent and sent[node][0].startswith(f"pulid_ids/ui/{frontend['kind']}_"), sent
        shown = page.js(f"(app.rootGraph ?? app.graph).getNodeById({node}).pulidText ?? null")
        assert shown == "saved: " + sent[node][0], f"{where}: the Save ID node shows {shown!r}"
    finally:
        page.close()
