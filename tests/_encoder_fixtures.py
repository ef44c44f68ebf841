"""Shared fixtures for the encoder tests: tiny real-format models loaded through the production loaders."""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from conftest import import_pack

import_pack()
from _tiny_faces import (  # noqa: E402
    blob_detections,
    cached,
    make_tiny_antelopev2,
    make_tiny_eva_checkpoint,
    make_tiny_facexlib,
)
from _writers import load_eva  # noqa: E402

from comfyui_pulid_flux.encoders import load_face_aligner, load_face_analyzer  # noqa: E402

ARCFACE_DIM = 512


class Models:
    def __init__(self):
        self.antelopev2 = cached("antelopev2", make_tiny_antelopev2)
        self.facexlib = cached("facexlib", make_tiny_facexlib)
        self.analyzer = load_face_analyzer(self.antelopev2)
        self.aligner = load_face_aligner(self.facexlib)
        # Random RetinaFace gives NaN boxes: replace only its output (facexlib format) with the blob finder.
        self.aligner.detector.detect_faces = blob_detections
        # BiSeNet takes ~1.5 s per crop on 2 CPU cores: run it for real once per distinct crop.
        self.aligner.parse = _memo_parse(self.aligner.parse)
        self.eva = load_eva(cached("eva_official.pt", make_tiny_eva_checkpoint))

    def kwargs(self, **kw):
        base = dict(face_analyzer=self.analyzer, aligner=self.aligner, eva=self.eva)
        base.update(kw)
        return base


def _memo_parse(parse):
    memo = {}

    def wrapped(aligned_bgr):
        key = hashlib.sha1(np.ascontiguousarray(aligned_bgr).tobytes()).hexdigest()
        if key not in memo:
            memo[key] = parse(aligned_bgr)
        return memo[key].clone()

    return wrapped


def models_fixture():
    """Body of a module-scoped ``models`` fixture (test modules wrap it: ``yield from models_fixture()``)."""
    m = Models()
    yield m
    del m.aligner.detector.detect_faces
    del m.aligner.parse


def bgr(rgb: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(rgb[:, :, ::-1])


def as_image(*rgbs: np.ndarray) -> torch.Tensor:
    """ComfyUI IMAGE (B, H, W, 3) float [0, 1] from same-size RGB uint8 arrays."""
    return torch.from_numpy(np.stack(rgbs)).float() / 255.0
