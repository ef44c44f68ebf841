"""Golden parity of the whole ID path (official PuLIDPipeline.get_id_embedding on stubbed detectors).

The golden stubs the detectors and the parser; here the same stubs are injected into the PRODUCTION
``encode_identity`` (image conversion, face choice, fallback, gray/white, resize, normalise, EVA taps,
id_cond), followed by the IDFormer calls the Encode node makes (tokens, uncond ID). Every size comes from
the sidecars; the tiny EVA tower and IDFormer are the eva_visual / idformer goldens.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from conftest import GOLDEN_DIR, bf16_bound, import_pack, rel_l2

import_pack()
from _golden_models import build_idformer  # noqa: E402
from _writers import eva_config_from_official, load_eva  # noqa: E402

from comfyui_pulid_flux.encoders import (  # noqa: E402
    BG_LABELS,
    DetectedFace,
    bg_mask,
    encode_identity,
    eva_input,
    face_features_image,
)

TIGHT = dict(atol=1e-6, rtol=1e-5)  # bg_mask / eva_input / id_cond
EVA = dict(atol=1e-4, rtol=1e-5)  # EVA hidden states
IDF = dict(atol=1e-5, rtol=1e-4)  # IDFormer


class StubAnalyzer:
    """insightface stand-in returning the golden candidate faces (the official stub's app.get)."""

    def __init__(self, bboxes, embeddings, fallback_feat):
        self.faces = [DetectedFace(b.numpy(), None, 0.9, e.numpy()) for b, e in zip(bboxes, embeddings)]
        self.fallback_feat = fallback_feat.numpy()
        self.seen, self.fallback_inputs = [], []

    def detect(self, bgr):
        self.seen.append(bgr.copy())
        return list(self.faces)

    def embed_aligned(self, aligned_bgr):
        self.fallback_inputs.append(aligned_bgr.copy())
        return self.fallback_feat.reshape(-1)


class StubAligner:
    """facexlib stand-in yielding the golden aligned face and parsing labels (the official stub's face_helper)."""

    def __init__(self, aligned_bgr, labels):
        self.aligned, self.labels = aligned_bgr.numpy(), labels
        self.seen = []

    def detect_landmarks(self, bgr, boxes=None, chosen=0):
        self.seen.append(bgr.copy())
        return np.zeros((5, 2))

    def align(self, bgr, landmarks):
        return self.aligned.copy()

    def parse(self, aligned_bgr):
        assert np.array_equal(aligned_bgr, self.aligned)
        return self.labels.clone()


@pytest.fixture(scope="module")
def parts(golden):
    p = golden("id_pipeline")
    ev = golden("eva_visual")
    eva = load_eva(GOLDEN_DIR / ev.meta["weights_file"], config=eva_config_from_official(ev.meta["model_config"]))
    return p, eva, build_idformer(golden("idformer"))


@torch.no_grad()
def _id_tokens(idf, eva, res, dtype=torch.float32):
    """What the Encode node does with the result: the IDFormer on it, and on zeros (the uncond ID)."""
    tokens = idf(res.id_cond.to(dtype), [h.to(dtype) for h in res.id_vit_hidden])
    return tokens.float(), idf.uncond_id(eva.config.num_tokens).float()


def _run(parts, *, no_insightface=False, antialias=True):
    p, eva, _ = parts
    io = p.io
    analyzer = StubAnalyzer(io["in.face_bboxes"], io["in.face_embeddings"], io["in.fallback_feat"])
    if no_insightface:
        analyzer.faces = []
    aligner = StubAligner(io["in.aligned_face_bgr"], io["in.parsing_labels"])
    image = io["in.image_rgb"].float() / 255.0  # as a ComfyUI IMAGE (H, W, C) in [0, 1]
    res = encode_identity(image[None], face_analyzer=analyzer, aligner=aligner, eva=eva, antialias=antialias)
    return res, analyzer, aligner


def test_bg_labels_and_mask(parts):
    p, _, _ = parts
    # the official bg_label list (get_id_embedding) as the sidecar states it
    listed = re.search(r"\[([\d,\s]+)\]", p.meta["outputs"]["out.bg_mask"])
    assert listed, p.meta["outputs"]["out.bg_mask"]
    assert sorted(BG_LABELS) == sorted(int(v) for v in listed.group(1).split(","))
    mask = bg_mask(p.io["in.parsing_labels"])
    assert torch.equal(mask.to(torch.uint8), p.io["out.bg_mask"])


@pytest.mark.parametrize("antialias,key", [(True, "out.eva_input"), (False, "out.eva_input_antialias_false")])
def test_eva_input(parts, antialias, key):
    p, eva, _ = parts
    feats = face_features_image(p.io["in.aligned_face_bgr"].numpy(), p.io["in.parsing_labels"])
    x = eva_input(feats, eva.config.image_size, antialias=antialias)
    assert x.shape == p.io[key].shape
    torch.testing.assert_close(x, p.io[key], **TIGHT)


def test_id_pipeline_golden(parts):
    p, eva, idf = parts
    io = p.io
    res, analyzer, aligner = _run(parts)
    # the detectors got the official BGR image
    bgr = io["in.image_rgb"].numpy()[:, :, ::-1]
    assert np.array_equal(analyzer.seen[0], bgr) and np.array_equal(aligner.seen[0], bgr)
    assert not analyzer.fallback_inputs
    # official face choice: largest bbox area
    areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in io["in.face_bboxes"].tolist()]
    assert res.info[0].face_index == int(np.argmax(areas)) and not res.info[0].used_fallback
    ante_dim = io["in.face_embeddings"].shape[1]
    torch.testing.assert_close(res.id_cond, io["out.id_cond"], **TIGHT)
    torch.testing.assert_close(res.id_cond[:, ante_dim:], io["out.id_cond_vit_l2"], **TIGHT)
    ref_hidden = p.seq("out.id_vit_hidden")
    assert len(res.id_vit_hidden) == len(ref_hidden)
    for k, (h, ref) in enumerate(zip(res.id_vit_hidden, ref_hidden)):
        torch.testing.assert_close(h, ref, **EVA, msg=f"id_vit_hidden {k}")
    tokens, uncond = _id_tokens(idf, eva, res)
    torch.testing.assert_close(tokens, io["out.id_embedding"], **IDF)
    torch.testing.assert_close(uncond, io["out.uncond_id_embedding"], **IDF)
    # preview: the gray / white face at the aligned size, plain detached CPU tensors
    assert res.faces.shape == (1, *io["in.aligned_face_bgr"].shape) and 0 <= res.faces.min() <= res.faces.max() <= 1
    for t in [res.id_cond, res.faces, *res.id_vit_hidden]:
        assert t.device.type == "cpu" and not t.requires_grad and t.dtype == torch.float32


def test_id_pipeline_golden_antialias_false(parts):
    p, eva, idf = parts
    res, _, _ = _run(parts, antialias=False)
    torch.testing.assert_close(_id_tokens(idf, eva, res)[0], p.io["out.id_embedding_antialias_false"], **IDF)
    assert res.meta["antialias"] == "False"


def test_id_pipeline_golden_fallback(parts):
    p, eva, idf = parts
    res, analyzer, _ = _run(parts, no_insightface=True)
    assert np.array_equal(analyzer.fallback_inputs[0], p.io["in.aligned_face_bgr"].numpy())  # ArcFace on the crop
    assert res.info[0].used_fallback and res.info[0].face_index is None and res.info[0].num_faces == 0
    torch.testing.assert_close(res.id_cond, p.io["out.id_cond_fallback"], **TIGHT)
    torch.testing.assert_close(_id_tokens(idf, eva, res)[0], p.io["out.id_embedding_fallback"], **IDF)


def test_id_pipeline_bf16_within_the_official_bf16_error(golden, parts):
    """EVA and the IDFormer in bf16, as the loaders store them on a bf16 device."""
    p, _, _ = parts
    ev = golden("eva_visual")
    eva16 = load_eva(GOLDEN_DIR / ev.meta["weights_file"], config=eva_config_from_official(ev.meta["model_config"]),
                     dtype=torch.bfloat16)
    idf16 = build_idformer(golden("idformer"), torch.bfloat16)
    res, _, _ = _run((p, eva16, idf16))
    tokens, uncond = _id_tokens(idf16, eva16, res, torch.bfloat16)
    assert rel_l2(p.io["out.id_embedding"], tokens) <= bf16_bound("id_pipeline_bf16_vs_fp32")
    assert rel_l2(p.io["out.uncond_id_embedding"], uncond) <= bf16_bound("id_pipeline_uncond_bf16_vs_fp32")
