#!/usr/bin/env python3
"""Encoder benchmark at full EVA02-CLIP-L-336 size (random weights, CPU). Prints results; not a test.

    python bench/encode.py [--threads N] [--skip-load]

Measures: loading the full tower from an official-layout fp16 .pt (what users have), one tower forward
(time, peak RSS, SDPA calls), the full-size IDFormer, the whole ``encode_identity`` for 1 and 4 references
(tiny antelopev2 / real-size random facexlib models), and that every encoder is released after ``del``
while the ID result stays alive.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import importlib.util
import os
import resource
import sys
import tempfile
import time
import weakref
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
PACK = "comfyui_pulid_flux"


def import_pack():
    """The repository as the package ``comfyui_pulid_flux`` (relative imports inside), as the tests do."""
    if PACK not in sys.modules:
        spec = importlib.util.spec_from_file_location(PACK, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
        mod = importlib.util.module_from_spec(spec)
        sys.modules[PACK] = mod
        spec.loader.exec_module(mod)
    sys.path.insert(0, str(ROOT / "tests"))  # for the tiny model builders (tests/_tiny_faces.py)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def rss_gb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1024**3


def timed(fn, repeat=1):
    best = float("inf")
    out = None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--skip-load", action="store_true", help="build the tower in memory instead of loading a .pt")
    args = ap.parse_args(argv)
    import_pack()
    import numpy as np
    import torch
    from _tiny_faces import blob_detections, cached, face_image, make_tiny_antelopev2, make_tiny_facexlib
    from _writers import load_eva, save_eva_checkpoint

    from comfyui_pulid_flux.encoders import (
        EVA02_CLIP_L_336,
        EvaVisionTower,
        check_pulid_tower,
        encode_identity,
        load_face_aligner,
        load_face_analyzer,
    )
    from comfyui_pulid_flux.pulid.encoder import IDFormer
    from comfyui_pulid_flux.pulid.model import PulidFluxModel

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; RSS at start {rss_gb():.2f} GB")

    # --- the full tower: build (meta + random fill), save in the official layout, load like a user --------
    t0 = time.perf_counter()
    src = EvaVisionTower.empty(EVA02_CLIP_L_336)
    sd = {k: torch.empty(v.shape).normal_(0.0, 0.02) for k, v in src.trunk.state_dict().items()}
    for k in sd:
        if k.endswith("norm1.weight") or k.endswith("norm2.weight") or k.endswith("norm.weight"):
            sd[k] = torch.ones_like(sd[k])
    src.trunk.load_state_dict(sd, assign=True)
    del sd
    n_params = sum(p.numel() for p in src.parameters())
    print(f"EVA02-L-336 tower: {n_params / 1e6:.1f} M parameters, built in {time.perf_counter() - t0:.1f} s")
    m = SimpleNamespace()  # every model lives here, so that one clear() releases them all
    if args.skip_load:
        m.eva = src
    else:
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "EVA02_CLIP_L_336_psz14_s6B.pt")
            t = time.perf_counter()
            save_eva_checkpoint(src, path, layout="official", dtype=torch.float16)
            print(f"  wrote official-layout fp16 .pt ({os.path.getsize(path) / 1e6:.0f} MB) in {time.perf_counter() - t:.1f} s")
            del src
            gc.collect()
            rss0 = rss_gb()
            t_load, m.eva = timed(lambda: load_eva(path))
            check_pulid_tower(m.eva.config, path)
            print(f"  load_eva (fp16 -> fp32, strict keys): {t_load:.1f} s, RSS {rss0:.2f} -> {rss_gb():.2f} GB")
    print(f"  peak RSS after tower: {peak_rss_gb():.2f} GB")

    # --- one tower forward ----------------------------------------------------------------------------
    x = torch.randn(1, 3, 336, 336)
    calls = []
    real_sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting(*a, **k):
        calls.append(1)
        return real_sdpa(*a, **k)

    torch.nn.functional.scaled_dot_product_attention = counting
    try:
        with torch.no_grad():
            t_fwd, (pooled, m.hidden) = timed(lambda: m.eva(x))
    finally:
        torch.nn.functional.scaled_dot_product_attention = real_sdpa
    print(f"tower forward 1x3x336x336 fp32: {t_fwd:.2f} s; pooled {tuple(pooled.shape)}, "
          f"hidden {len(m.hidden)} x {tuple(m.hidden[0].shape)}; SDPA calls per forward {len(calls)} "
          f"(blocks {len(m.eva.trunk.blocks)}); peak RSS {peak_rss_gb():.2f} GB")

    # --- full-size IDFormer ----------------------------------------------------------------------------
    t = time.perf_counter()
    m.idf = IDFormer(**PulidFluxModel.from_config(device="meta").encoder_args).eval()
    t_build = time.perf_counter() - t
    id_cond = torch.randn(1, 1280)
    with torch.no_grad():
        t_idf, tokens = timed(lambda: m.idf(id_cond, m.hidden), repeat=2)
        t_unc, _ = timed(lambda: m.idf.uncond_id(EVA02_CLIP_L_336.num_tokens), repeat=1)
    n_idf = sum(p.numel() for p in m.idf.parameters())
    print(f"IDFormer full size ({n_idf / 1e6:.1f} M params, built {t_build:.1f} s): forward {t_idf * 1000:.0f} ms "
          f"-> {tuple(tokens.shape)}; uncond {t_unc * 1000:.0f} ms")

    # --- whole encode (tiny insightface, real-size random facexlib, full EVA + IDFormer) ------------------
    m.analyzer = load_face_analyzer(cached("antelopev2", make_tiny_antelopev2))
    m.aligner = load_face_aligner(cached("facexlib", make_tiny_facexlib))
    m.aligner.detector.detect_faces = blob_detections  # random RetinaFace gives NaN boxes
    imgs = [face_image(blobs=((96 + 96 * i, 224, 32, 220),)) for i in range(4)]

    def encode(n):
        batch = torch.from_numpy(np.stack(imgs[:n])).float() / 255
        res = encode_identity(batch, face_analyzer=m.analyzer, aligner=m.aligner, eva=m.eva)
        with torch.no_grad():  # what the Encode node adds
            return m.idf(res.id_cond, res.id_vit_hidden), m.idf.uncond_id(EVA02_CLIP_L_336.num_tokens)

    for n in (1, 4):
        t_enc, (res_tokens, res_uncond) = timed(lambda n=n: encode(n))
        print(f"encode_identity + IDFormer, {n} reference(s): {t_enc:.2f} s ({t_enc / n:.2f} s per image); tokens "
              f"{tuple(res_tokens.shape)}, uncond {tuple(res_uncond.shape)}; peak RSS {peak_rss_gb():.2f} GB")

    # --- release -----------------------------------------------------------------------------------------
    refs = {name: weakref.ref(getattr(m, name)) for name in ("eva", "analyzer", "aligner", "idf")}
    del m.aligner.detector.detect_faces
    rss_before = rss_gb()
    m.__dict__.clear()
    del pooled, tokens
    gc.collect()
    rss_freed = rss_gb()
    try:  # glibc keeps freed arenas mapped; hand them back so RSS shows the release
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    alive = [name for name, r in refs.items() if r() is not None]
    print(f"after del + gc: encoders alive = {alive or 'none'}; result kept: tokens {tuple(res_tokens.shape)}; "
          f"RSS {rss_before:.2f} -> {rss_freed:.2f} GB (after malloc_trim {rss_gb():.2f} GB)")
    return 1 if alive else 0


if __name__ == "__main__":
    sys.exit(main())
