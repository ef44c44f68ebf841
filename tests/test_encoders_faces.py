"""The face glue on REAL insightface and facexlib code, with tiny models in the real file layouts.

insightface's unmodified FaceAnalysis runs hand-made ONNX files named like antelopev2; facexlib loads
random checkpoints under its real file names, and only its RetinaFace output is replaced (random weights
give NaN boxes) by ``blob_detections``. Alignment, BiSeNet parsing, ArcFace and the EVA tower run for real.
"""

from __future__ import annotations

import gc
import logging
import warnings
import weakref

import numpy as np
import pytest
import torch
from _encoder_fixtures import ARCFACE_DIM, as_image, bgr, models_fixture
from _tiny_faces import blob_detections, cached, face_image, make_tiny_eva_checkpoint
from _writers import load_eva

from comfyui_pulid_flux.encoders import (
    DetectedFace,
    choose_face,
    encode_identity,
    face_features_image,
)


@pytest.fixture(scope="module")
def models():
    yield from models_fixture()


# Three "faces": brightness sets the tiny detector's box size (250 > 220 > 200).
LEFT, CENTRE, RIGHT = (96, 224, 32, 200), (320, 224, 32, 220), (544, 96, 32, 250)


def test_analyzer_routes_the_pack_and_returns_raw_embeddings(models):
    fa = models.analyzer
    assert set(fa.app.models) == {"detection", "recognition"}
    assert tuple(fa.app.det_model.input_size) == (640, 640)  # the official app.prepare(det_size=(640, 640))
    img = bgr(face_image(blobs=(CENTRE,)))
    faces = fa.detect(img)
    assert len(faces) == 1 and faces[0].kps.shape == (5, 2) and faces[0].embedding.shape == (ARCFACE_DIM,)
    from insightface.utils import face_align

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # scikit-image 0.26 inside norm_crop
        crop = face_align.norm_crop(img, landmark=faces[0].kps, image_size=112)
    expected = fa.recognizer.get_feat(crop).reshape(-1)
    np.testing.assert_allclose(faces[0].embedding, expected, rtol=1e-6, atol=1e-6)
    assert abs(float(np.linalg.norm(faces[0].embedding)) - 1.0) > 1e-3  # raw, not normed_embedding


def _face(x1, y1, x2, y2):
    return DetectedFace(np.array([x1, y1, x2, y2], np.float32), None, 0.9, None)


def test_choose_face_rules():
    faces = [_face(0, 0, 10, 10), _face(50, 0, 80, 30), _face(20, 0, 30, 10), _face(90, 0, 120, 30)]
    # largest: the official sorted(key=area)[-1] -> the LAST of the tied largest faces (index 3)
    assert choose_face(faces) == 3
    assert [choose_face(faces, "largest", i) for i in range(4)] == [3, 1, 2, 0]
    assert [choose_face(faces, "left_to_right", i) for i in range(4)] == [0, 2, 1, 3]
    with pytest.raises(IndexError, match="only 4 faces"):
        choose_face(faces, "largest", 4)
    with pytest.raises(ValueError, match="face rule 'biggest'"):
        choose_face(faces, "biggest")


def test_several_faces_rule_applied_and_logged(models, caplog):
    img = face_image(blobs=(LEFT, CENTRE, RIGHT))
    with caplog.at_level(logging.INFO):
        res = encode_identity(as_image(img), **models.kwargs())
    info = res.info[0]
    assert info.num_faces == 3 and not info.used_fallback
    faces = models.analyzer.detect(bgr(img))
    areas = [f.area for f in faces]
    assert info.bbox == tuple(float(v) for v in faces[int(np.argmax(areas))].bbox)
    assert "reference image 0 has 3 faces" in caplog.text and "'largest'" in caplog.text
    res2 = encode_identity(as_image(img), **models.kwargs(face_rule="left_to_right", face_index=0))
    lefts = [f.bbox[0] for f in faces]
    assert res2.info[0].bbox == tuple(float(v) for v in faces[int(np.argmin(lefts))].bbox)
    assert not torch.equal(res.id_cond[:, :ARCFACE_DIM], res2.id_cond[:, :ARCFACE_DIM])
    with pytest.raises(RuntimeError, match=r"reference image 0: .*only 3 faces"):
        encode_identity(as_image(img), **models.kwargs(face_index=5))


# Two people: DIM on the left is the official centre face (nearest the image centre), BRIGHT on the right is
# the largest (the tiny detector's box grows with brightness). Expected picks follow from the blobs alone.
DIM, BRIGHT = (96, 224, 32, 200), (544, 96, 32, 250)
PICKS = {("largest", 0): BRIGHT, ("largest", 1): DIM, ("left_to_right", 0): DIM, ("left_to_right", 1): BRIGHT}


def _blob_row(dets, blob):
    """The facexlib-format detection of a blob (its box holds the blob's centre)."""
    cx, cy = blob[0] + blob[2] / 2, blob[1] + blob[2] / 2
    rows = [d for d in dets if d[0] <= cx <= d[2] and d[1] <= cy <= d[3]]
    assert len(rows) == 1
    return rows[0]


@pytest.mark.parametrize("source", ["facexlib", "insightface"])
@pytest.mark.parametrize("rule_index", list(PICKS), ids=[f"{r}-{i}" for r, i in PICKS])
def test_both_encoders_see_the_chosen_face(models, monkeypatch, source, rule_index):
    """ArcFace and the aligned, parsed face for EVA-CLIP come from the face face_rule / face_index chose,
    whatever the alignment source (the official facexlib path alone would take DIM, the centre face)."""
    rule, index = rule_index
    img = face_image(blobs=(DIM, BRIGHT))
    b = bgr(img)
    aligned_seen = []
    real_align = models.aligner.align
    monkeypatch.setattr(models.aligner, "align", lambda im, lmk: aligned_seen.append(real_align(im, lmk))
                        or aligned_seen[-1])
    res = encode_identity(as_image(img), **models.kwargs(face_rule=rule, face_index=index, align_source=source))
    want = PICKS[rule_index]
    # ArcFace: the embedding of insightface's face at the chosen blob
    faces = models.analyzer.detect(b)
    at_blob = _blob_row(np.array([list(f.bbox) + [f.embedding] for f in faces], dtype=object), want)
    np.testing.assert_array_equal(res.arcface[0].numpy(), at_blob[4])
    # EVA-CLIP: the aligned crop shows the chosen blob (its brightness; the other person is out of view)...
    (aligned,) = aligned_seen
    assert aligned.max() == want[3]
    # ... and is exactly the alignment on the chosen blob's landmarks from the requested source
    if source == "facexlib":
        landmarks = _blob_row(blob_detections(b), want)[5:15].reshape(5, 2)
    else:
        landmarks = next(f.kps for f in faces if np.array_equal(f.embedding, at_blob[4]))
    expected = face_features_image(real_align(b, landmarks), models.aligner.parse(real_align(b, landmarks)))
    assert torch.equal(res.faces[0], expected[0].permute(1, 2, 0))
    assert res.info[0].align_source == source and res.info[0].num_faces == 2


def test_facexlib_missing_the_chosen_face_is_said_not_swapped(models, monkeypatch, caplog):
    """facexlib sees only the OTHER person: no silent swap; insightface's landmarks of the chosen face, logged."""
    img = face_image(blobs=(DIM, BRIGHT))
    only_dim = _blob_row(blob_detections(bgr(img)), DIM)[None]
    monkeypatch.setattr(models.aligner.detector, "detect_faces", lambda im, thr=0.8, **_: only_dim)
    with caplog.at_level(logging.WARNING):
        res = encode_identity(as_image(img), **models.kwargs(face_rule="largest", face_index=0))
    assert res.info[0].align_source == "insightface"
    assert "no face matching insightface's chosen face" in caplog.text
    assert res.info[0].bbox[0] > 320  # BRIGHT, the chosen one


def test_arcface_fallback_on_the_aligned_crop(models, caplog):
    img = face_image(blobs=((320, 224, 32, 130),))  # too dim for the tiny SCRFD, found by the facexlib stand-in
    b = bgr(img)
    assert models.analyzer.detect(b) == []
    with caplog.at_level(logging.WARNING):
        res = encode_identity(as_image(img), **models.kwargs())
    assert res.info[0].used_fallback and res.info[0].num_faces == 0
    assert "insightface found no face in reference image 0" in caplog.text
    aligned = models.aligner.align(b, blob_detections(b)[0, 5:15].reshape(5, 2))
    expected = models.analyzer.recognizer.get_feat(aligned).reshape(-1)  # official handler_ante.get_feat
    np.testing.assert_allclose(res.id_cond[0, :ARCFACE_DIM].numpy(), expected, rtol=1e-6, atol=1e-6)


def test_result_shapes_progress_and_dtype(models):
    imgs = as_image(face_image(blobs=(CENTRE,)), face_image(blobs=(RIGHT,)))
    steps = []
    res = encode_identity(imgs, **models.kwargs(progress=lambda d, t: steps.append((d, t))))
    cfg = models.eva.config
    assert res.id_cond.shape == (2, ARCFACE_DIM + cfg.embed_dim)
    assert [tuple(h.shape) for h in res.id_vit_hidden] == [(2, cfg.num_tokens, cfg.width)] * len(cfg.tap_blocks)
    assert res.faces.shape == (2, 512, 512, 3)
    assert torch.equal(res.arcface, res.id_cond[:, :ARCFACE_DIM])
    torch.testing.assert_close(res.id_cond[:, ARCFACE_DIM:].norm(dim=1), torch.ones(2))
    assert [d for d, _ in steps] == sorted(d for d, _ in steps) and steps[-1][0] == steps[-1][1]
    for t in [res.arcface, res.id_cond, res.faces, *res.id_vit_hidden]:
        assert t.dtype == torch.float32 and t.device.type == "cpu" and not t.requires_grad


def test_result_keeps_no_encoder_alive(models):
    eva = load_eva(cached("eva_official.pt", make_tiny_eva_checkpoint))
    ref = weakref.ref(eva)
    res = encode_identity(as_image(face_image(blobs=(CENTRE,))), **models.kwargs(eva=eva))
    del eva
    gc.collect()
    assert ref() is None and res.id_cond is not None
