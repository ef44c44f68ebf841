"""Regenerate ``workflows/*.json`` (+ ``.jpg`` thumbnails) from ``workflow_specs.py``.

    python tests/_e2e/make_workflows.py [--comfyui ~/.cache/comfyui-pulid-flux/ComfyUI-0.3.64] [--chromium /usr/bin/chromium]

Starts a ComfyUI server with the pack, builds each UI workflow from ``/object_info``, loads it into the
real frontend (headless Chromium over the DevTools protocol), and writes what the frontend serialises
(``app.graphToPrompt().workflow``, i.e. what "Save" writes). It also checks that the frontend's API
prompt equals ``ui_to_api.convert`` of that workflow. Without Chromium (``--no-frontend``) the builder's
own UI JSON is written. A developer tool: the tests never run it.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from _e2e import ui_to_api, workflow_specs  # noqa: E402
from _e2e.browser import Browser, find_chromium  # noqa: E402
from _e2e.pack_models import model_paths_yaml_sections  # noqa: E402
from _e2e.server import PACK_DIR_NAME, ComfyServer  # noqa: E402

log = logging.getLogger("make_workflows")
PACK = HERE.parent.parent
OUT = PACK / "workflows"

JS = """(async () => {
  const data = %s, layout = %s;
  await app.loadGraphData(data, true, true, null, {showMissingNodesDialog: false, showMissingModelsDialog: false});
  await new Promise(r => setTimeout(r, 300));
  // stack each column by the nodes' real sizes, groups left to right with a gap, each group boxing its nodes
  const g = app.rootGraph ?? app.graph, node = id => g.getNodeById(Number(id));
  const TITLE = LiteGraph.NODE_TITLE_HEIGHT || 30, GAP = 40, PAD = 20, GTITLE = 40;
  const groupOf = {};
  layout.groups.forEach(([title, ids], i) => ids.forEach(id => { groupOf[id] = i; }));
  const cols = {};
  for (const [id, [c, r]] of Object.entries(layout.cells)) (cols[c] ??= []).push([r, node(id)]);
  let x = 0, prev = null;
  for (const c of Object.keys(cols).map(Number).sort((a, b) => a - b)) {
    const members = cols[c].sort((a, b) => a[0] - b[0]).map(e => e[1]);
    const grp = groupOf[members[0].id];
    if (prev !== null && grp !== prev) x += 2 * GAP;
    prev = grp;
    let y = GTITLE + PAD + TITLE;
    for (const n of members) { n.pos = [x + PAD, y]; y += n.size[1] + TITLE + GAP; }
    x += Math.max(...members.map(n => n.size[0])) + GAP;
  }
  const groups = g.groups ?? g._groups;
  layout.groups.forEach(([title, ids], i) => {
    const ns = ids.map(node), grp = groups[i];
    const x0 = Math.min(...ns.map(n => n.pos[0])) - PAD, y0 = Math.min(...ns.map(n => n.pos[1])) - TITLE - GTITLE - PAD;
    const x1 = Math.max(...ns.map(n => n.pos[0] + n.size[0])) + PAD, y1 = Math.max(...ns.map(n => n.pos[1] + n.size[1])) + PAD;
    grp.pos = [x0, y0];
    grp.size = [x1 - x0, y1 - y0];
  });
  const note = (g.nodes ?? g._nodes).find(n => n.type === 'MarkdownNote');
  if (note) note.pos = [-note.size[0] - 3 * GAP, 0];
  app.canvas.ds.scale = 0.6;
  app.canvas.ds.offset = [(note ? note.size[0] : 0) + 3 * GAP + 40, 60];
  const p = await app.graphToPrompt();
  p.workflow.extra.ds = {scale: app.canvas.ds.scale, offset: [...app.canvas.ds.offset]};
  return JSON.stringify({workflow: p.workflow, output: p.output});
})()"""


READY = "!!(window.app && window.app.graph && window.app.canvas)"
SCREENSHOT = PACK / "docs" / "screenshot_basic.png"
# The README picture: at 100 %, the PuLID loaders and "2. Your photo" (the example face, Encode), then the Apply
# node, placed in turn at the same spot of a large page and captured there; pasted side by side.
SHOT = """(async () => {
  const data = %s;
  await app.loadGraphData(data, true, true, null, {showMissingNodesDialog: false, showMissingModelsDialog: false});
  await new Promise(r => setTimeout(r, 1500));
  const g = app.rootGraph ?? app.graph, nodes = g.nodes ?? g._nodes, groups = g.groups ?? g._groups;
  const photo = groups.find(gr => gr.title.startsWith('2.'));
  const loader = nodes.find(n => n.type === 'PuLIDFluxID_ModelLoader');
  const apply = nodes.find(n => n.type === 'PuLIDFluxID_Apply');
  const T = LiteGraph.NODE_TITLE_HEIGHT || 30, M = 16;
  const fxl = nodes.find(n => n.type === 'PuLIDFluxID_FacexlibLoader');
  const bottom = Math.max(photo.pos[1] + photo.size[1], fxl.pos[1] + fxl.size[1]) + M;
  const a = [loader.pos[0] - M, photo.pos[1], photo.pos[0] + photo.size[0] - loader.pos[0] + 2 * M, bottom - photo.pos[1]];
  const b = [apply.pos[0] - M, apply.pos[1] - T - 2 * M, apply.size[0] + 2 * M, apply.size[1] + T + 3 * M];
  window.__pulidShow = r => {  // r at 100 %% near (x, y) of the page; returns its rectangle on the page
    const ds = app.canvas.ds, box = app.canvas.canvas.getBoundingClientRect();
    ds.scale = 1;
    ds.offset = [%d - box.left - r[0], %d - box.top - r[1]];
    app.canvas.setDirty(true, true);
    const [x, y] = ds.convertOffsetToCanvas([r[0], r[1]]);
    return {x: box.left + x, y: box.top + y, width: r[2], height: r[3]};
  };
  return [a, b];
})()"""


def frontend_roundtrip(comfy_url: str, chromium: str, profile: Path, items: dict[str, dict]) -> dict[str, dict]:
    browser = Browser(chromium, profile)
    try:
        page = browser.page()
        page.goto(comfy_url + "/")
        page.wait_for(READY, 90, "frontend ready")
        out = {}
        for name, ui in items.items():
            ui = dict(ui)
            layout = ui.pop("_layout")
            out[name] = json.loads(page.js(JS % (json.dumps(ui), json.dumps(layout))))
        page.close()
        return out
    finally:
        browser.close()


def screenshot(comfy_url: str, chromium: str, profile: Path, workflow: dict, path: Path) -> None:
    from PIL import Image

    at = (200, 160)  # clear of the side bar and the top bar
    browser = Browser(chromium, profile)
    try:
        page = browser.page()
        page.goto(comfy_url + "/", width=2600, height=1400)
        page.wait_for(READY, 90, "frontend ready")
        rects = page.js(SHOT % (json.dumps(workflow), *at))
        parts = []
        for i, r in enumerate(rects):
            clip = page.js(f"window.__pulidShow({json.dumps(r)})")
            time.sleep(0.8)  # a few frames
            part = path.with_name(f"part{i}.png")
            page.screenshot(part, {k: round(v) for k, v in clip.items()})
            parts.append(Image.open(part).convert("RGB"))
        page.close()
    finally:
        browser.close()
    gap = 24
    out = Image.new("RGB", (sum(p.width for p in parts) + gap * (len(parts) - 1), max(p.height for p in parts)),
                    (24, 24, 24))
    x = 0
    for part in parts:
        out.paste(part, (x, 0))
        x += part.width + gap
    out.quantize(colors=192).save(SCREENSHOT, optimize=True)  # a small palette PNG
    log.info("wrote %s (%dx%d)", SCREENSHOT.relative_to(PACK), *out.size)


def thumbnail(workflow: dict, title: str, path: Path, size=(512, 288)) -> None:
    """A plain schematic of the graph (nodes as boxes, links as lines); nothing reads it but people."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", size, (32, 34, 40))
    d = ImageDraw.Draw(img)
    nodes = {n["id"]: n for n in workflow["nodes"]}
    xs = [n["pos"][0] for n in nodes.values()]
    ys = [n["pos"][1] for n in nodes.values()]
    x0, y0 = min(xs), min(ys)
    scale = min((size[0] - 40) / (max(xs) - x0 + 400), (size[1] - 70) / (max(ys) - y0 + 200))

    def box(n):
        x, y = 20 + (n["pos"][0] - x0) * scale, 50 + (n["pos"][1] - y0) * scale
        return x, y, x + 320 * scale, y + 150 * scale

    for link in workflow["links"]:
        a, b = box(nodes[link[1]]), box(nodes[link[3]])
        d.line([(a[2], (a[1] + a[3]) / 2), (b[0], (b[1] + b[3]) / 2)], fill=(120, 140, 170), width=1)
    for n in nodes.values():
        ours = n["type"].startswith("PuLIDFluxID_")
        d.rectangle(box(n), fill=(70, 110, 160) if ours else (70, 72, 80), outline=(200, 200, 210))
    d.text((20, 14), title, fill=(235, 235, 240))
    img.save(path, "JPEG", quality=85)


def pack_version() -> str:
    import re

    return re.search(r'^version = "([^"]+)"', (PACK / "pyproject.toml").read_text(), re.M).group(1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--comfyui", default=str(Path.home() / ".cache" / "comfyui-pulid-flux" / "ComfyUI-0.3.64"))
    p.add_argument("--chromium", default=find_chromium() or "/usr/bin/chromium")
    p.add_argument("--no-frontend", action="store_true")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    base = Path(tempfile.mkdtemp(prefix="pulid_wf_"))
    server = ComfyServer(Path(a.comfyui), sys.executable, base, model_paths=model_paths_yaml_sections(),
                         packs={PACK_DIR_NAME: PACK})
    try:
        server.start()
        object_info = server.get_json("/object_info")
        versions = {workflow_specs.CORE_ID: server.get_json("/system_stats")["system"]["comfyui_version"],
                    workflow_specs.PACK_ID: pack_version()}
        built = {name: workflow_specs.build_ui(fn(), object_info, workflow_specs.note_text(name), versions)
                 for name, fn in workflow_specs.WORKFLOWS.items()}
        if a.no_frontend:
            for ui in built.values():
                ui.pop("_layout")
            results = {name: {"workflow": ui, "output": ui_to_api.convert(ui, object_info)} for name, ui in built.items()}
        else:
            results = frontend_roundtrip(server.url, a.chromium, base / "chromium", built)
        OUT.mkdir(exist_ok=True)
        for name, res in results.items():
            wf, api = res["workflow"], res["output"]
            mine = ui_to_api.convert(wf, object_info)
            strip = {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in mine.items()}
            theirs = {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in api.items()}
            if strip != theirs:
                raise SystemExit(f"{name}: ui_to_api.convert differs from the frontend:\n{strip}\n{theirs}")
            (OUT / f"{name}.json").write_text(json.dumps(wf, indent=2) + "\n")
            thumbnail(wf, name.replace("_", " "), OUT / f"{name}.jpg")
            log.info("wrote workflows/%s.json (%d nodes) + .jpg", name, len(wf["nodes"]))
        if not a.no_frontend:
            screenshot(server.url, a.chromium, base / "chromium_shot", results["pulid_flux_basic"]["workflow"],
                       base / "shot.png")
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
