"""Face similarity (likeness/similarity.py + the node) and the likeness sheet, with the tiny antelopev2 models
(real insightface code, hand-made ONNX files: every bright blob is a face)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from _encoder_fixtures import as_image
from _tiny_faces import cached, face_image, make_tiny_antelopev2
from conftest import COMFYUI_ROOT, NO_COMFYUI, setup_comfyui

from comfyui_pulid_flux.encoders import FaceNotFoundError, load_face_analyzer
from comfyui_pulid_flux.likeness import sheet as S
from comfyui_pulid_flux.likeness import similarity as sim
from comfyui_pulid_flux.pulid.fusion import parse_numbers

A = face_image(blobs=((192, 224, 64, 240),))  # one face
B = face_image(blobs=((320, 128, 64, 200),), background=50)  # another face
GROUP = face_image(blobs=((64, 224, 64, 240), (448, 128, 64, 200)))
EMPTY = face_image(blobs=())  # no face


@pytest.fixture(scope="module")
def analyzer():
    return load_face_analyzer(cached("antelopev2", make_tiny_antelopev2))


def test_an_image_with_itself_is_one_and_similarity_is_symmetric(analyzer):
    ref_a = sim.reference_embeddings(analyzer, as_image(A))
    ref_b = sim.reference_embeddings(analyzer, as_image(B))
    self_score = sim.score_images(analyzer, as_image(A), ref_a)[0]
    assert self_score.chosen == 0 and abs(self_score.similarity - 1.0) < 1e-5
    ab = sim.score_images(analyzer, as_image(A), ref_b)[0].similarity
    ba = sim.score_images(analyzer, as_image(B), ref_a)[0].similarity
    assert abs(ab - ba) < 1e-6 and ab < 1.0 - 1e-3  # two different faces, one number either way


def test_face_free_image_gives_the_documented_score(analyzer):
    refs = sim.reference_embeddings(analyzer, as_image(A))
    scores = sim.score_images(analyzer, as_image(EMPTY, A), refs)
    assert scores[0].chosen is None and scores[0].faces == () and scores[0].similarity == sim.NO_FACE_SCORE
    assert abs(scores[1].similarity - 1.0) < 1e-5  # batch-aware: the other image is still scored
    out = sim.annotate(EMPTY, scores[0])
    assert out.shape == EMPTY.shape and not np.array_equal(out, EMPTY)  # "no face" is written on it
    assert "no face" in sim.summary(scores, "mean", 1)
    with pytest.raises(FaceNotFoundError, match="reference image 0"):
        sim.reference_embeddings(analyzer, as_image(EMPTY))


def test_several_faces_the_best_match_counts_and_is_marked(analyzer):
    refs = sim.reference_embeddings(analyzer, as_image(A))
    score = sim.score_images(analyzer, as_image(GROUP), refs)[0]
    assert len(score.faces) == 2
    sims = [f.similarity for f in score.faces]
    assert score.chosen == int(np.argmax(sims)) and score.similarity == max(sims)
    out = sim.annotate(GROUP, score)
    x1, y1, x2, y2 = (int(round(v)) for v in score.faces[score.chosen].bbox)
    assert tuple(out[min(max(y1, 0), out.shape[0] - 1), (x1 + x2) // 2]) == sim.CHOSEN_COLOUR  # green top edge


def test_reference_modes(analyzer):
    refs = sim.reference_embeddings(analyzer, as_image(A, B))
    imgs = as_image(A, B)
    c = sim.cosine(refs, refs)
    mean = [s.similarity for s in sim.score_images(analyzer, imgs, refs, "mean")]
    best = [s.similarity for s in sim.score_images(analyzer, imgs, refs, "max")]
    item = [s.similarity for s in sim.score_images(analyzer, imgs, refs, "per_item")]
    np.testing.assert_allclose(mean, c.mean(axis=1), atol=1e-6)
    np.testing.assert_allclose(best, [1.0, 1.0], atol=1e-5)
    np.testing.assert_allclose(item, [1.0, 1.0], atol=1e-5)
    with pytest.raises(ValueError, match="per_item"):
        sim.score_images(analyzer, as_image(A, B, A), refs, "per_item")
    with pytest.raises(ValueError, match="use the face model"):
        sim.score_images(analyzer, imgs, refs[:, :100])
    with pytest.raises(ValueError, match="reference mode 'median'"):
        sim.score_images(analyzer, imgs, refs, "median")


def test_sheet_and_chart_geometry():
    imgs = [np.full((96, 64, 3), 40 * i, np.uint8) for i in range(5)]
    out = S.contact_sheet(imgs, [("weight 1", "similarity 0.5")] * 5, columns=3)
    tw, th = S.tile_size(64, 96)
    assert out.shape == (S.GAP + 2 * (th + S.CAPTION_H + S.GAP), S.GAP + 3 * (tw + S.GAP), 3)
    assert (out.shape[1], out.shape[0]) == S.sheet_size(5, 64, 96, 3)
    big = S.sheet_size(1, 4 * S.TILE_MAX, S.TILE_MAX, 0)
    assert big == (S.GAP + S.TILE_MAX + S.GAP, S.GAP + S.TILE_MAX // 4 + S.CAPTION_H + S.GAP)
    chart = S.likeness_chart([0.5, 1, 1.5, 1], [0.2, 0.4, 0.5, 0.3], [0, 0, 0, 4])
    assert chart.shape == (S.CHART_SIZE[1], S.CHART_SIZE[0], 3)
    assert S.likeness_chart([1], [float("0.3")], [0]).shape == chart.shape  # one point: no zero division
    assert parse_numbers("2", 3, "start_steps", broadcast=True) == [2.0, 2.0, 2.0]
    for bad, needle in (("1, 2", "2 values for 3"), ("a", "comma-separated"), ("1, inf, 2", "finite")):
        with pytest.raises(ValueError, match=needle):
            parse_numbers(bad, 3, "weights")


# ------------------------------------------------------------------------------------------- nodes
@pytest.fixture(scope="module")
def nodes():
    if COMFYUI_ROOT is None:
        pytest.skip(NO_COMFYUI)
    setup_comfyui()
    from comfyui_pulid_flux import nodes as n

    return n


def test_similarity_node(nodes, analyzer, caplog, tmp_path, monkeypatch):
    import folder_paths

    from comfyui_pulid_flux.nodes.similarity import FaceSimilarity as Node
    from comfyui_pulid_flux.pulid.embedding import IDEmbedding

    refs = sim.reference_embeddings(analyzer, as_image(A))
    ident = IDEmbedding(tokens=torch.zeros(1, 4, 8), arcface=torch.from_numpy(refs))
    monkeypatch.setattr(folder_paths, "get_temp_directory", lambda: str(tmp_path))  # the node's preview images
    with caplog.at_level(logging.WARNING, logger="PuLID-Flux"):
        out = Node.execute(face_analysis=analyzer, image=as_image(A, EMPTY), combine="mean", identity=ident)
    values, text, annotated, summary = out.args
    assert values[1] == sim.NO_FACE_SCORE and abs(values[0] - 1.0) < 1e-5
    assert [float(v) for v in text.split(",")] == pytest.approx(values, abs=1e-4)
    assert annotated.shape == (2, *A.shape) and "no face" in summary
    shown = out.ui if isinstance(out.ui, dict) else out.ui.as_dict()
    assert shown["text"] == (summary,) and len(shown["images"]) == 2 and "no face found in generated image 1" in caplog.text
    assert all((tmp_path / im["subfolder"] / im["filename"]).is_file() for im in shown["images"])
    by_photo = Node.execute(face_analysis=analyzer, image=as_image(A), combine="mean", reference_images=as_image(A))
    assert by_photo.args[0] == pytest.approx(values[:1], abs=1e-6)
    with pytest.raises(ValueError, match="not both"):
        Node.execute(face_analysis=analyzer, image=as_image(A), combine="mean", identity=ident,
                     reference_images=as_image(A))
    with pytest.raises(ValueError, match="neither"):
        Node.execute(face_analysis=analyzer, image=as_image(A), combine="mean")
    with pytest.raises(ValueError, match="older version.*encode the reference photos again"):
        Node.execute(face_analysis=analyzer, image=as_image(A), combine="mean",
                     identity=IDEmbedding(tokens=torch.zeros(1, 4, 8)))


def test_sheet_node(nodes):
    from comfyui_pulid_flux.nodes.sheet import LikenessSheet as Node

    imgs = as_image(A, B, A, B)
    sheet, chart = Node.execute(images=imgs, similarities="0.1, 0.2, 0.3, 0.25", weights="0.5, 1, 1.5, 1",
                                start_steps="0, 0, 0, 4", columns=0).args
    w, h = S.sheet_size(4, A.shape[1], A.shape[0], 0)
    assert sheet.shape == (1, h, w, 3) and chart.shape == (1, S.CHART_SIZE[1], S.CHART_SIZE[0], 3)
    with pytest.raises(ValueError, match="similarities"):
        Node.execute(images=imgs, similarities="0.1", weights="1", start_steps="0", columns=0)
