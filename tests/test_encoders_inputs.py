"""Bad input and missing files for the encoders: every case gives a clear outcome with an asserted message."""

from __future__ import annotations

import gc
import importlib.metadata
import logging
import os
import shutil
import weakref

import numpy as np
import pytest
import torch
from _encoder_fixtures import as_image, models_fixture
from _tiny_faces import cached, face_image, make_tiny_antelopev2, make_tiny_facexlib

from comfyui_pulid_flux.encoders import (
    FaceNotFoundError,
    ImageInputError,
    ModelFilesError,
    encode_identity,
    load_face_aligner,
    load_face_analyzer,
    prepare_images,
)
from comfyui_pulid_flux.encoders import face_analysis as fa_mod
from comfyui_pulid_flux.encoders.image import resize_long_side, to_rgb_uint8


@pytest.fixture(scope="module")
def models():
    yield from models_fixture()


FACE = (320, 224, 32, 220)


# --- images -----------------------------------------------------------------------------------


def test_float_image_round_trips_to_the_original_bytes():
    rgb = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    t = torch.from_numpy(rgb).float() / 255.0  # what ComfyUI's LoadImage gives
    assert np.array_equal(to_rgb_uint8(t, 0), rgb)
    assert np.array_equal(to_rgb_uint8(t.half(), 0), rgb)


def test_rgba_is_composited_over_white():
    rgb = face_image()
    alpha = np.full(rgb.shape[:2] + (1,), 255, np.uint8)
    alpha[:, :100] = 0  # transparent strip
    out = to_rgb_uint8(torch.from_numpy(np.concatenate([rgb, alpha], axis=2)).float() / 255, 0)
    assert np.all(out[:, :100] == 255) and np.array_equal(out[:, 100:], rgb[:, 100:])


def test_rgba_reference_encodes_like_rgb(models, caplog):
    rgb = face_image(blobs=(FACE,))
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
    with caplog.at_level(logging.INFO):
        res_rgba = encode_identity(as_image(rgba), **models.kwargs())
    assert "alpha channel" in caplog.text
    res_rgb = encode_identity(as_image(rgb), **models.kwargs())
    assert torch.equal(res_rgba.id_cond, res_rgb.id_cond)


@pytest.mark.parametrize("bad", [np.zeros((1, 64, 64, 3), np.float32), [torch.zeros(1, 64, 64, 3)],
                                 torch.zeros(64, 64, 3), torch.zeros(1, 64, 64, 1), torch.zeros(1, 64, 64, 5),
                                 torch.zeros(1, 64, 64, 3, dtype=torch.uint8)], ids=str)
def test_only_comfyui_images_are_accepted(bad):
    with pytest.raises(ImageInputError, match=r"must be a ComfyUI IMAGE \(batch, height, width, 3\) float tensor"):
        prepare_images(bad)


def test_resize_long_side_is_the_official_one():
    import cv2

    img = np.random.default_rng(1).integers(0, 256, (1500, 2001, 3), dtype=np.uint8)
    out = resize_long_side(img)
    k = 1024 / 2001
    assert out.shape == (int(1500 * k), int(2001 * k), 3)  # int() truncation, as the official resize_numpy_image_long
    assert np.array_equal(out, cv2.resize(img, (int(2001 * k), int(1500 * k)), interpolation=cv2.INTER_LANCZOS4))
    small = img[:700, :900]
    assert resize_long_side(small) is small  # never up-scaled


def test_tiny_image_is_refused():
    with pytest.raises(ImageInputError, match=r"reference image 0 is 1x1 pixels, too small"):
        prepare_images(torch.zeros(1, 1, 1, 3))
    with pytest.raises(ImageInputError, match=r"reference image 0 is 1024x5 after scaling .* aspect ratio is too extreme"):
        prepare_images(torch.zeros(1, 40, 8000, 3))


def test_huge_image_is_scaled_down_and_encodes(models):
    img = torch.full((1, 6000, 8000, 3), 30 / 255.0)
    img[0, 2000:3000, 3500:4500] = 240 / 255.0  # a face of 1000 px -> 128 px after the 1024 cap
    rgb = prepare_images(img)[0]
    assert rgb.shape == (768, 1024, 3)
    res = encode_identity(img, **models.kwargs())
    assert res.info[0].num_faces >= 1 and not res.info[0].used_fallback
    assert max(res.info[0].bbox) <= 1024 + 200  # bbox in the scaled image's pixels
    with pytest.raises(ImageInputError, match="larger than 16384"):
        prepare_images(torch.zeros(1, 1, 1, 3).expand(1, 20000, 100, 3))  # refused before any copy


def test_bad_values_and_empty_batch():
    with pytest.raises(ImageInputError, match="NaN"):
        prepare_images(torch.full((1, 64, 64, 3), float("nan")))
    with pytest.raises(ImageInputError, match="no reference image"):
        prepare_images(torch.zeros(0, 64, 64, 3))


# --- faces --------------------------------------------------------------------------------------


def test_no_face_in_one_of_three_references(models):
    face, empty = face_image(blobs=(FACE,)), face_image(blobs=())
    with pytest.raises(FaceNotFoundError) as e:
        encode_identity(as_image(face, empty, face), **models.kwargs())
    assert e.value.index == 1
    assert "no face found in reference image 1" in str(e.value) and "crop" in str(e.value)


def test_batch_where_one_image_fails(models):
    face = as_image(face_image(blobs=(FACE,)))
    with pytest.raises(ImageInputError, match=r"reference image 2 contains NaN") as e:
        encode_identity(torch.cat([face, face, torch.full_like(face, float("inf"))]), **models.kwargs())
    assert e.value.index == 2


def test_bad_options(models):
    img = as_image(face_image(blobs=(FACE,)))
    with pytest.raises(ValueError, match="align_source 'mtcnn'"):
        encode_identity(img, **models.kwargs(align_source="mtcnn"))
    with pytest.raises(ValueError, match="face rule 'biggest'"):
        encode_identity(img, **models.kwargs(face_rule="biggest"))


# --- model files ---------------------------------------------------------------------------------


def test_missing_antelopev2_files(tmp_path):
    missing = tmp_path / "antelopev2"
    with pytest.raises(ModelFilesError, match="does not exist") as e:
        load_face_analyzer(missing)
    assert str(missing) in str(e.value) and "glintr100.onnx" in str(e.value)
    missing.mkdir()
    with pytest.raises(ModelFilesError, match="holds no .onnx file") as e:
        load_face_analyzer(missing)
    assert "scrfd_10g_bnkps.onnx" in str(e.value)
    shutil.copytree(cached("antelopev2", make_tiny_antelopev2), missing / "antelopev2")
    with pytest.raises(ModelFilesError, match="nested folder .*move them up one level"):
        load_face_analyzer(missing)
    only_rec = tmp_path / "only_rec"
    only_rec.mkdir()
    shutil.copy(missing / "antelopev2" / "glintr100.onnx", only_rec)
    with pytest.raises(ModelFilesError, match=r"no face detector in .*only_rec.*scrfd_10g_bnkps\.onnx"):
        load_face_analyzer(only_rec)


def test_missing_facexlib_files(tmp_path, models):
    with pytest.raises(ModelFilesError) as e:
        load_face_aligner(tmp_path)
    msg = str(e.value)
    assert str(tmp_path) in msg and "parsing_bisenet.pth" in msg and "detection_Resnet50_Final.pth" in msg
    src = cached("facexlib", make_tiny_facexlib)
    os.symlink(os.path.join(src, "parsing_bisenet.pth"), tmp_path / "parsing_bisenet.pth")
    aligner = load_face_aligner(tmp_path, need_detector=False)  # enough for align_source="insightface"
    img = as_image(face_image(blobs=(FACE,)))
    res = encode_identity(img, **models.kwargs(aligner=aligner, align_source="insightface"))
    assert res.info[0].align_source == "insightface"
    with pytest.raises(ModelFilesError, match=r"lacks detection_Resnet50_Final\.pth"):
        encode_identity(img, **models.kwargs(aligner=aligner, align_source="facexlib"))


def test_loaders_are_shared_while_alive_then_released(tmp_path):
    d = shutil.copytree(cached("antelopev2", make_tiny_antelopev2), tmp_path / "antelopev2")
    a, b = load_face_analyzer(d), load_face_analyzer(d)
    assert a is b
    ref = weakref.ref(a)
    del a, b
    gc.collect()
    assert ref() is None


def test_onnx_providers(monkeypatch, caplog):
    import onnxruntime

    monkeypatch.setattr(fa_mod, "_logged_providers", False)
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(importlib.metadata, "distribution", lambda name: object())  # both distributions "installed"
    with caplog.at_level(logging.INFO):
        assert fa_mod.onnx_providers("CUDA") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert "both onnxruntime and onnxruntime-gpu are installed" in caplog.text
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["AzureExecutionProvider", "CPUExecutionProvider"])
    assert fa_mod.onnx_providers("CUDA") == ["CPUExecutionProvider"]
