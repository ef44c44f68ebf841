#!/usr/bin/env python3
"""The ID's share of a diffusers FluxTransformer2DModel call, next to the ComfyUI figure.

Same geometry as bench/step_overhead.py: Flux hidden 3072 / 24 heads, 2 double + 4 single blocks (1 + 1 CAs),
fp32, CPU, 256 image + 128 text tokens (--large: 1024 + 512), random weights. Calls of the plain transformer and
of the patched one (folded tables, then the reference CA path) are interleaved in rotating order; prints median
call times and the overhead ratio (patched / plain - 1), then runs bench/step_overhead.py (the ComfyUI patch on
ComfyUI's own Flux, --no-compile) and prints its overhead lines beside.

    python bench/diffusers_overhead.py [--large] [--calls 12] [--comfyui ~/.cache/comfyui-pulid-flux/ComfyUI-0.33.0]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def library():
    spec = importlib.util.spec_from_file_location("pulid_flux_id", ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    sys.modules["pulid_flux_id"] = module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build(depth: int, single: int, image_tokens: int, text_tokens: int):
    from diffusers import FluxTransformer2DModel
    from pulid_flux_id.pulid.config import FLUX_DEV, ca_layout
    from pulid_flux_id.pulid.embedding import IDEmbedding
    from pulid_flux_id.pulid.model import PulidFluxModel

    torch.manual_seed(0)
    heads, head_dim = 24, 128
    tr = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=depth, num_single_layers=single,
                                attention_head_dim=head_dim, num_attention_heads=heads, joint_attention_dim=4096,
                                pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56))
    tr = tr.eval().requires_grad_(False)
    meta = PulidFluxModel.from_config(FLUX_DEV, device="meta")
    ca = dict(meta.ca_args, dim=heads * head_dim)
    pm = PulidFluxModel(meta.encoder_args, ca, ca_layout(depth, single).num_ca, device="meta")
    pm.pulid_ca.to_empty(device="cpu")  # the encoder stays on meta: sampling needs the CAs only
    pm = pm.eval().requires_grad_(False)
    for p in pm.pulid_ca.parameters():
        torch.nn.init.normal_(p, std=0.02)
    ident = IDEmbedding(tokens=torch.randn(1, FLUX_DEV.num_id_queries, FLUX_DEV.id_dim),
                        uncond=torch.randn(1, FLUX_DEV.num_id_queries, FLUX_DEV.id_dim))
    side = int(image_tokens ** 0.5)
    ids = torch.zeros(side, side, 3)
    ids[..., 1], ids[..., 2] = torch.arange(side)[:, None], torch.arange(side)[None, :]
    inputs = dict(hidden_states=torch.randn(1, side * side, 64), timestep=torch.tensor([0.7]),
                  guidance=torch.tensor([4.0]), pooled_projections=torch.randn(1, 768),
                  encoder_hidden_states=torch.randn(1, text_tokens, 4096), txt_ids=torch.zeros(text_tokens, 3),
                  img_ids=ids.reshape(-1, 3), return_dict=False)
    return tr, pm, ident, inputs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--large", action="store_true")
    ap.add_argument("--calls", type=int, default=6)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--single", type=int, default=4)
    ap.add_argument("--comfyui", default=os.environ.get("COMFYUI_ROOT"))
    args = ap.parse_args()
    library()
    from pulid_flux_id.diffusers_pulid import attach

    image_tokens, text_tokens = (1024, 512) if args.large else (256, 128)
    tr, pm, ident, inputs = build(args.depth, args.single, image_tokens, text_tokens)
    times: dict[str, list[float]] = {"plain": [], "folded": [], "reference": []}
    with torch.no_grad():
        for i in range(args.calls + 2):
            order = list(times)
            for name in order[i % 3:] + order[:i % 3]:
                a = None if name == "plain" else attach(tr, pm, ident, folded=name == "folded", track_steps=False)
                t0 = time.perf_counter()
                tr(**inputs)
                dt = time.perf_counter() - t0
                if a is not None:
                    a.remove()
                if i >= 2:  # warm-up calls are not timed
                    times[name].append(dt)
    plain = statistics.median(times["plain"])
    print(f"diffusers FluxTransformer2DModel, {image_tokens} image + {text_tokens} text tokens, fp32 CPU, "
          f"median of {args.calls}:")
    print(f"  {pm.num_ca} ID cross-attentions on {args.depth} double + {args.single} single blocks", flush=True)
    for name, ts in times.items():
        med = statistics.median(ts)
        extra = "" if name == "plain" else f"   ID share of a call: {med / plain - 1:+.1%}"
        print(f"  {name:10s} {med * 1e3:8.1f} ms{extra}", flush=True)
    if args.comfyui:
        print("ComfyUI (bench/step_overhead.py, same geometry):")
        cmd = [sys.executable, str(ROOT / "bench" / "step_overhead.py"), "--comfyui", args.comfyui, "--no-compile",
               "--calls", str(args.calls), "--depth", str(args.depth), "--single", str(args.single)]
        cmd += ["--large"] if args.large else []
        r = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln.strip() for ln in r.stdout.splitlines() if ln.strip()]
        picked = [ln for ln in lines if "overhead" in ln.lower() or "median" in ln.lower()] or lines[-12:]
        for line in picked or [f"step_overhead.py failed ({r.returncode}): {r.stderr.strip()[-500:]}"]:
            print("  " + line)
    else:
        print("(pass --comfyui <ComfyUI checkout> to print the ComfyUI figure beside)")


if __name__ == "__main__":
    main()
