"""Tiny stand-ins for the real face / EVA model files, in their real formats and file names.

Reusable by any test (nodes e2e included):

* ``make_tiny_antelopev2(dir)``: hand-made ONNX models named like the antelopev2 pack
  (scrfd_10g_bnkps.onnx, glintr100.onnx, 1k3d68.onnx, 2d106det.onnx, genderage.onnx) that insightface's
  unmodified FaceAnalysis routes and runs. The detector "finds" a face on every bright blob: each
  stride-32 cell whose mean luminance exceeds ``BLOB_LUMA`` (pixel value ~180) fires, NMS keeps one box
  per blob, brighter blobs get bigger boxes (so "largest" is testable), landmarks are a face-like layout.
* ``make_tiny_facexlib(dir)``: random-weight fp16 state dicts under facexlib's file names
  (detection_Resnet50_Final.pth, parsing_bisenet.pth, optionally parsing_parsenet.pth). Random RetinaFace
  yields NaN boxes, so tests replace only its output with ``blob_detections`` (same blobs, facexlib format).
* ``make_tiny_eva_checkpoint(path, layout=...)``: a random 24-block EVA02 tower (``TINY_EVA``) saved as
  the official eva_clip ``.pt`` (``visual.*``), open_clip safetensors (``visual.trunk.*``) or bare timm keys.
* ``face_image(...)``: synthetic RGB uint8 images with blobs at given places and brightness.
* ``tiny_cache_dir()``: where built files are cached (built once per machine/session).
"""

from __future__ import annotations

import importlib
import os
import tempfile
import warnings

import numpy as np

OPSET, IR_VERSION = 13, 8
BLOB_LUMA = 0.4  # detector threshold on (x - 127.5) / 128, i.e. pixel ~ 179
# 5 points (left eye, right eye, nose, left mouth, right mouth) in stride-32 cells from the anchor.
KPS_TEMPLATE = np.array([[-0.6, -0.4], [0.6, -0.4], [0.0, 0.1], [-0.5, 0.6], [0.5, 0.6]], np.float32)
BOX_BASE, BOX_PER_LUMA = 1.5, 1.5  # box half-side in cells = BOX_BASE + BOX_PER_LUMA * luminance
ANTELOPEV2_FILES = ("scrfd_10g_bnkps.onnx", "glintr100.onnx", "2d106det.onnx", "1k3d68.onnx", "genderage.onnx")
FACEXLIB_FILES = {
    "detection_Resnet50_Final.pth": ("facexlib.detection.retinaface", "RetinaFace", dict(network_name="resnet50", device="cpu")),
    "parsing_bisenet.pth": ("facexlib.parsing.bisenet", "BiSeNet", dict(num_class=19)),
    "parsing_parsenet.pth": ("facexlib.parsing.parsenet", "ParseNet", dict(in_size=512, out_size=512, parsing_ch=19)),
}
_VERSION = "2"  # bump when a builder changes (invalidates the cache)


def tiny_cache_dir() -> str:
    d = os.environ.get("PULID_TINY_CACHE") or os.path.join(tempfile.gettempdir(), f"pulid-flux-tiny-{os.getuid()}")
    os.makedirs(d, exist_ok=True)
    return d


def _tensor(name, arr):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(arr, dtype=np.float32), name)


def _save_onnx(graph, path):
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="pulid_tiny")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    tmp = path + ".tmp"
    onnx.save(model, tmp)
    os.replace(tmp, path)


def build_blob_scrfd(path: str) -> None:
    """SCRFD signature (input [1,3,H,W]; 9 rank-2 outputs: scores, boxes, kps for strides 8, 16, 32)."""
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, outs = [], [], {"score": [], "bbox": [], "kps": []}
    inp = "input.1"
    k = 60.0  # logit slope: sigmoid(k * (luma - BLOB_LUMA))
    for s in (8, 16, 32):
        pool = f"pool{s}"
        nodes.append(helper.make_node("AveragePool", [inp], [pool], kernel_shape=[s, s], strides=[s, s]))
        if s == 32:  # anchor 0 fires on bright cells, anchor 1 never
            sw = np.zeros((2, 3, 1, 1), np.float32)
            sw[0] = k / 3
            sb = [-k * BLOB_LUMA, -100.0]
            bw = np.full((8, 3, 1, 1), BOX_PER_LUMA / 3, np.float32)
        else:
            sw, sb = np.zeros((2, 3, 1, 1), np.float32), [-20.0, -20.0]
            bw = np.zeros((8, 3, 1, 1), np.float32)
        inits += [_tensor(f"sw{s}", sw), _tensor(f"sb{s}", sb), _tensor(f"bw{s}", bw),
                  _tensor(f"bb{s}", np.full(8, BOX_BASE)), _tensor(f"kw{s}", np.zeros((20, 3, 1, 1))),
                  _tensor(f"kb{s}", np.tile(KPS_TEMPLATE.reshape(-1), 2))]
        nodes += [helper.make_node("Conv", [pool, f"sw{s}", f"sb{s}"], [f"logit{s}"]),
                  helper.make_node("Sigmoid", [f"logit{s}"], [f"prob{s}"]),
                  helper.make_node("Conv", [pool, f"bw{s}", f"bb{s}"], [f"box{s}"]),
                  helper.make_node("Conv", [pool, f"kw{s}", f"kb{s}"], [f"kp{s}"])]
        for src, width, kind in ((f"prob{s}", 1, "score"), (f"box{s}", 4, "bbox"), (f"kp{s}", 10, "kps")):
            shp = f"shape_{src}"
            inits.append(numpy_helper.from_array(np.array([-1, width], np.int64), shp))
            nodes += [helper.make_node("Transpose", [src], [f"{src}_nhwc"], perm=[0, 2, 3, 1]),
                      helper.make_node("Reshape", [f"{src}_nhwc", shp], [f"{src}_out"])]
            outs[kind].append((f"{src}_out", width))
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [f"n_{n}", w])
               for kind in ("score", "bbox", "kps") for n, w in outs[kind]]
    graph = helper.make_graph(nodes, "tiny_blob_scrfd", [helper.make_tensor_value_info(
        inp, TensorProto.FLOAT, [1, 3, "height", "width"])], outputs, inits)
    _save_onnx(graph, path)


def build_pool_fc(path: str, size: int, pool: int, out_dim: int, seed: int, act: str | None = None) -> None:
    """[N,3,size,size] -> AveragePool -> Flatten -> Gemm (seeded random) [-> act] -> [N,out_dim]."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    feat = 3 * (size // pool) ** 2
    w = rng.standard_normal((feat, out_dim)).astype(np.float32) / np.sqrt(feat)
    nodes = [helper.make_node("AveragePool", ["input.1"], ["p"], kernel_shape=[pool, pool], strides=[pool, pool]),
             helper.make_node("Flatten", ["p"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "W", "B"], ["fc" if act else "output"])]
    if act:
        nodes.append(helper.make_node(act, ["fc"], ["output"]))
    graph = helper.make_graph(
        nodes, os.path.basename(path),
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, size, size])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["None", out_dim])],
        [_tensor("W", w), _tensor("B", rng.standard_normal(out_dim) * 0.1)])
    _save_onnx(graph, path)


def make_tiny_antelopev2(directory: str, *, with_landmarks: bool = True, arcface_dim: int = 512) -> str:
    """Write the tiny antelopev2 pack FLAT into ``directory`` (created); returns it."""
    os.makedirs(directory, exist_ok=True)
    build_blob_scrfd(os.path.join(directory, "scrfd_10g_bnkps.onnx"))
    build_pool_fc(os.path.join(directory, "glintr100.onnx"), 112, 16, arcface_dim, seed=0)
    if with_landmarks:
        build_pool_fc(os.path.join(directory, "2d106det.onnx"), 192, 32, 212, seed=1, act="Tanh")
        build_pool_fc(os.path.join(directory, "1k3d68.onnx"), 192, 48, 3309, seed=2, act="Tanh")
        build_pool_fc(os.path.join(directory, "genderage.onnx"), 96, 8, 3, seed=3, act="Sigmoid")
    return directory


def make_tiny_facexlib(directory: str, *, with_parsenet: bool = False, seed: int = 0) -> str:
    """Random-init fp16 facexlib checkpoints under their real names in ``directory``; returns it."""
    import torch

    os.makedirs(directory, exist_ok=True)
    torch.manual_seed(seed)
    for fname, (mod, cls, kw) in FACEXLIB_FILES.items():
        if fname == "parsing_parsenet.pth" and not with_parsenet:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision 'pretrained' deprecation inside RetinaFace
            net = getattr(importlib.import_module(mod), cls)(**kw)
        sd = {k: (v.half() if v.is_floating_point() else v) for k, v in net.state_dict().items()}
        tmp = os.path.join(directory, fname + ".tmp")
        torch.save(sd, tmp)
        os.replace(tmp, os.path.join(directory, fname))
    return directory


def tiny_eva_config():
    """A narrow EVA02 tower with the geometry the loader demands (336 px, patch 14, 24 blocks, so 577 tokens)
    whose heads its shapes tell: width 64 = 1 head of 64."""
    from comfyui_pulid_flux.encoders.eva_clip import EVA02_CLIP_L_336, EvaVisionConfig

    return EvaVisionConfig(image_size=EVA02_CLIP_L_336.image_size, patch_size=EVA02_CLIP_L_336.patch_size, width=64,
                           depth=EVA02_CLIP_L_336.depth, num_heads=1, mlp_hidden=170, embed_dim=32)


def make_tiny_eva_checkpoint(path: str, *, layout: str = "official", config=None, seed: int = 0, dtype=None) -> str:
    """A random tiny EVA02 tower saved in a real layout ('official' .pt, 'open_clip' / 'timm' safetensors).

    Biases and LayerNorm affines are randomised too, so a key-mapping mistake changes the output.
    """
    import torch
    from _writers import save_eva_checkpoint

    from comfyui_pulid_flux.encoders.eva_clip import EvaVisionTower

    torch.manual_seed(seed)
    tower = EvaVisionTower(config or tiny_eva_config())
    with torch.no_grad():
        for name, p in tower.named_parameters():
            if name.endswith("bias") or p.ndim == 1:
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if "norm" in name and name.endswith("weight") else 0.0))
    save_eva_checkpoint(tower, path, layout=layout, dtype=dtype or torch.float16)
    return path


def cached(name: str, builder, *args, **kwargs) -> str:
    """``builder(target, ...)`` once per cache dir; returns the built path."""
    target = os.path.join(tiny_cache_dir(), f"v{_VERSION}", name)
    marker = target + ".done"
    if not os.path.exists(marker):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        builder(target, *args, **kwargs)
        with open(marker, "w") as f:
            f.write("ok")
    return target


def face_image(height: int = 480, width: int = 640, blobs=((192, 224, 64, 240),), background: int = 30) -> np.ndarray:
    """RGB uint8 image with square bright blobs: each (x, y, side, value) with x, y the top-left corner."""
    img = np.full((height, width, 3), background, np.uint8)
    for x, y, side, value in blobs:
        img[y:y + side, x:x + side] = value
        # a little texture so aligned crops and ArcFace inputs are not flat
        img[y + side // 4:y + side // 4 + 4, x + side // 4:x + 3 * side // 4] = max(0, value - 120)
    return img


def blob_detections(bgr: np.ndarray, conf_threshold: float = 0.8, min_value: int = 60, **_) -> np.ndarray:
    """facexlib ``detect_faces`` output format (n, 15): box, score, 5 (x, y) points, for every bright blob."""
    import cv2

    gray = cv2.cvtColor(np.ascontiguousarray(bgr), cv2.COLOR_BGR2GRAY)
    n, _, stats, _ = cv2.connectedComponentsWithStats((gray >= min_value).astype(np.uint8))
    rows = []
    for i in range(1, n):
        x, y, w, h, area = (float(v) for v in stats[i])
        if area < 64:
            continue
        pts = [(0.3, 0.4), (0.7, 0.4), (0.5, 0.55), (0.35, 0.75), (0.65, 0.75)]
        rows.append([x, y, x + w, y + h, 0.99] + [c for px, py in pts for c in (x + px * w, y + py * h)])
    return np.asarray(rows, np.float32).reshape(-1, 15)
