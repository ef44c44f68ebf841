"""The ID card in the real ComfyUI frontend (headless Chromium, the frontend this ComfyUI pins).

The basic workflow, with a Save ID node added, is queued from the page: the UI receives the rendered image
and the card (shown on the Save ID node). The card's bytes are dropped as a file on a new Load ID node, whose
image widget uploads it to input/ (the frontend's own /upload/image call) and selects it; the encode chain is
removed, Load ID feeds Apply, and the graph queued again from the page renders the very same pixels.
"""

from __future__ import annotations

import base64
import json
import sys

import numpy as np
import pytest
from _e2e.browser import Browser, find_chromium
from _e2e.harness import PACK, pixels, reference_images
from _e2e.server import PACK_DIR_NAME, ComfyServer

pytestmark = [pytest.mark.e2e]
if find_chromium() is None:
    pytest.skip("Chromium not found: apt-get install -y chromium (or set PULID_CHROMIUM)", allow_module_level=True)

from test_frontend import ADD_SAVE_ID, _open, _queue, _shrink, _tiny_files  # noqa: E402

CARD = "dropped_card.png"
DROP = """(async () => {
  const g = app.rootGraph ?? app.graph;
  const n = LiteGraph.createNode('PuLIDFluxID_LoadID');
  g.add(n);
  n.pos = [100, 900];
  const bytes = Uint8Array.from(atob(%s), c => c.charCodeAt(0));
  const dt = new DataTransfer();
  dt.items.add(new File([bytes], %s, {type: 'image/png'}));
  await n.onDragDrop({dataTransfer: dt, preventDefault() {}, stopPropagation() {}});
  return String(n.id);
})()"""
SELECTED = "(n => n && n.widgets.find(w => w.name === 'image')?.value)((app.rootGraph ?? app.graph).getNodeById(%s))"
REWIRE = """(() => {
  const g = app.rootGraph ?? app.graph, nodes = [...(g.nodes ?? g._nodes)];
  const apply = nodes.find(n => n.type === 'PuLIDFluxID_Apply');
  g.getNodeById(%s).connect(0, apply, apply.inputs.findIndex(i => i.name === 'identity'));
  const gone = ['PuLIDFluxID_EncodeIdentity', 'PuLIDFluxID_EvaClipLoader', 'PuLIDFluxID_FaceAnalysisLoader',
                'PuLIDFluxID_FacexlibLoader', 'LoadImage', 'PreviewImage', 'PuLIDFluxID_SaveID'];
  for (const n of nodes) if (gone.includes(n.type)) g.remove(n);
  return (g.nodes ?? g._nodes).map(n => n.type);
})()"""


@pytest.fixture(scope="module")
def frontend(tmp_path_factory):
    from conftest import import_pack, setup_comfyui

    root = setup_comfyui()
    import_pack()
    from _e2e.cache import CACHE_DIR
    from _e2e.pack_models import model_paths_yaml_sections
    from _e2e.workflow_specs import MODELS

    base = tmp_path_factory.mktemp("frontend_card")
    for name, src in _tiny_files(CACHE_DIR).items():  # the real file names the workflow uses -> tiny files
        link = base / "models" / MODELS[name][1] / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(src)
    settings = base / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text(json.dumps({"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False,
                                    "Comfy.Workflow.Persist": False}))
    server = ComfyServer(root, sys.executable, base, model_paths=model_paths_yaml_sections(CACHE_DIR),
                         packs={PACK_DIR_NAME: PACK})
    browser = None
    try:
        server.start()
        for name, data in reference_images().items():
            server.upload_image(data, name)
        browser = Browser(find_chromium(), base / "chromium")
        yield {"server": server, "browser": browser, "base": base, "label": "pinned by this ComfyUI"}
    finally:
        if browser is not None:
            browser.close()
        server.stop()


def _rendered(page, server) -> tuple[np.ndarray, list[dict]]:
    """The sampled image the UI received, and the ID card images (Save ID's, in output/pulid_ids)."""
    images = [im for im in page.js("window.__pulid.images") if im.get("type") == "output"]
    images = [im for i, im in enumerate(images) if im not in images[:i]]  # each _queue adds a listener
    cards = [im for im in images if im.get("subfolder", "").startswith("pulid_ids")]
    renders = [im for im in images if im not in cards]
    assert len(renders) == 1, images
    return pixels(server.view(renders[0])), cards


def test_card_dropped_on_load_id_renders_as_the_encoded_identity(frontend):
    server = frontend["server"]
    page = frontend["browser"].page()
    try:
        _, where = _open(page, frontend, "pulid_flux_basic")
        _shrink(page)
        page.js(ADD_SAVE_ID % json.dumps("ui/card"))
        _queue(page, server, where)
        encoded, cards = _rendered(page, server)
        assert len(cards) == 1 and cards[0]["filename"].endswith("_.png"), cards
        card = server.view(cards[0])

        node = page.js(DROP % (json.dumps(base64.b64encode(card).decode()), json.dumps(CARD)))
        page.wait_for(SELECTED % node + f" === {json.dumps(CARD)}", 60, f"{where}: the dropped card is selected")
        assert (frontend["base"] / "input" / CARD).read_bytes() == card, "the widget uploaded the card to input/"
        left = page.js(REWIRE % node)
        assert "PuLIDFluxID_LoadID" in left and not [t for t in left if "Face" in t or "Eva" in t], left
        _queue(page, server, where + " from the dropped card")
        from_card, _ = _rendered(page, server)
        assert np.array_equal(from_card, encoded), f"{where}: the card renders other pixels than the encode"
    finally:
        page.close()
