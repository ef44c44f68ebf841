"""The shipped likeness sweep through a real ComfyUI server (HTTP API, tiny models): every weight x start step
is sampled with one seed, scored by the Face Similarity node and drawn into a contact sheet and a chart, both
returned at the sizes the sheet geometry gives."""

from __future__ import annotations

import numpy as np
import pytest
from _e2e.harness import TINY_SIZE, nodes_of, pixels
from _e2e.workflow_specs import SWEEP_STARTS, SWEEP_WEIGHTS
from conftest import import_pack

import_pack()
from comfyui_pulid_flux.likeness import sheet as S  # noqa: E402

pytest_plugins = ["_e2e.fixtures"]
pytestmark = [pytest.mark.e2e, pytest.mark.comfyui]


def _saved(e2e, res, api, node: str):
    out = res.history["outputs"][node]["images"]
    assert len(out) == 1 and out[0]["type"] == "output", out
    return pixels(e2e.server.view(out[0]))


def test_likeness_sweep_returns_sheet_and_chart(e2e):
    api = e2e.api("pulid_flux_likeness_sweep")
    n = len(SWEEP_WEIGHTS) * len(SWEEP_STARTS)
    samplers = nodes_of(api, "KSampler")
    assert len(samplers) == len(nodes_of(api, "PuLIDFluxID_Apply")) == n
    assert len({api[s]["inputs"]["seed"] for s in samplers}) == 1  # one seed
    res = e2e.run(api)
    assert set(samplers) <= res.executed_nodes | res.cached_nodes
    sheet_node = nodes_of(api, "PuLIDFluxID_LikenessSheet")[0]
    columns = api[sheet_node]["inputs"]["columns"]
    saves = {api[k]["inputs"]["images"][1]: k for k in nodes_of(api, "SaveImage")
             if api[k]["inputs"]["images"][0] == sheet_node}
    sheet = _saved(e2e, res, api, saves[0])
    chart = _saved(e2e, res, api, saves[1])
    w, h = S.sheet_size(n, TINY_SIZE, TINY_SIZE, columns)
    assert sheet.shape == (h, w, 3)
    assert chart.shape == (S.CHART_SIZE[1], S.CHART_SIZE[0], 3)
    # the sampled images are the tiles: the first tile's pixels are not the background
    tile = sheet[S.GAP:S.GAP + TINY_SIZE, S.GAP:S.GAP + TINY_SIZE]
    assert not np.all(tile == np.array(S.BACKGROUND, np.uint8))
    # the similarity node showed its one-line summary and scored every image of the batch
    likeness = nodes_of(api, "PuLIDFluxID_FaceSimilarity")[0]
    text = res.history["outputs"][likeness]["text"]
    assert len(text) == 1 and text[0].startswith("likeness (ArcFace cosine") and text[0].count(",") >= n - 1
