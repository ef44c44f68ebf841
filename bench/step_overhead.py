#!/usr/bin/env python3
"""Step overhead, clone cost and sampling weights of the PuLID Flux patch, measured side by side.

Plain Flux vs Flux + PuLID at full width (hidden 3072, 24 heads), depth reduced to 2 double + 4 single
blocks (keeps the CA share: 1 + 1 cross-attentions), fp32, CPU, real ComfyUI code (model_base.Flux,
ModelPatcher, the OUTER_SAMPLE / DIFFUSION_MODEL wrappers, patches_replace). Calls are interleaved
(alternating order) so drift hits both equally.

Prints: median step times, the measured overhead with a bootstrap 95 % CI, the analytic FLOP overhead
of the official per-step work (counted with torch.utils.flop_counter), their ratio (target <= 1.0),
bytes copied by a downstream clone() of the patched MODEL (over tensor storages; target 0), and the
parameters handed to ComfyUI for sampling (CAs) vs the IDFormer's.

    COMFYUI_ROOT=/opt/comfyui/ComfyUI-0.3.64 python bench/step_overhead.py [--large] [--calls 30]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
PACK = "comfyui_pulid_flux"


def setup(comfy_root: str):
    sys.path.insert(0, comfy_root)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.model_management  # noqa: F401

    spec = importlib.util.spec_from_file_location(PACK, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[PACK] = mod
    spec.loader.exec_module(mod)


def flux_config(depth: int, single: int) -> dict:
    import dataclasses

    import comfy.ldm.flux.model

    # Flux.1-dev geometry (flux/util.py), depth reduced
    cfg = dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=4096,
               hidden_size=3072, mlp_ratio=4.0, num_heads=24, depth=depth, depth_single_blocks=single,
               axes_dim=[16, 56, 56], theta=10000, patch_size=2, qkv_bias=True, guidance_embed=True)
    if "txt_ids_dims" in {f.name for f in dataclasses.fields(comfy.ldm.flux.model.FluxParams)}:
        cfg["txt_ids_dims"] = []
    return cfg


def build_flux(depth: int, single: int):
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    mc = comfy.supported_models.Flux(flux_config(depth, single))
    mc.set_inference_dtype(torch.float32, None)
    model = mc.get_model({})
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.diffusion_model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02 + (1.0 if "norm" in name else 0.0))
    model.diffusion_model.requires_grad_(False)
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())


def build_pulid(depth: int, single: int):
    import comfy.model_management as mm
    import comfy.model_patcher

    from comfyui_pulid_flux.pulid.config import PulidFluxConfig
    from comfyui_pulid_flux.pulid.embedding import IDEmbedding
    from comfyui_pulid_flux.pulid.model import PulidFluxModel

    cfg = PulidFluxConfig(flux_double_blocks=depth, flux_single_blocks=single)
    pm = PulidFluxModel.from_config(cfg).eval().requires_grad_(False)  # full-size IDFormer + CAs
    g = torch.Generator().manual_seed(1)
    emb = IDEmbedding(tokens=torch.randn(1, cfg.num_id_queries, cfg.id_dim, generator=g),
                      uncond=torch.randn(1, cfg.num_id_queries, cfg.id_dim, generator=g))
    pp = comfy.model_patcher.ModelPatcher(pm, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())
    return pm, pp, emb


def run_context(patcher, fn):
    """fn(run_model_options) inside the patcher's OUTER_SAMPLE wrappers, with a real CFGGuider (as sample())."""
    import comfy.model_patcher
    import comfy.patcher_extension as pe
    import comfy.samplers

    guider = comfy.samplers.CFGGuider(patcher)
    guider.model_options = comfy.model_patcher.create_model_options_clone(patcher.model_options)
    to = guider.model_options.setdefault("transformer_options", {})
    pe.merge_nested_dicts(to.setdefault("wrappers", {}), patcher.wrappers, copy_dict1=False)
    wrappers = pe.get_all_wrappers(pe.WrappersMP.OUTER_SAMPLE, guider.model_options, is_model_options=True)
    return pe.WrapperExecutor.new_class_executor(lambda *a, **k: fn(guider.model_options), guider, wrappers).execute(
        None, None, None, None)


def step_fn(patcher, run_options, inputs, sample_sigmas):
    import comfy.patcher_extension as pe

    x, t, ctx, y, guidance = inputs

    def step():
        to = pe.merge_nested_dicts({}, run_options["transformer_options"], copy_dict1=False)
        to.update(cond_or_uncond=[0], uuids=[None], sigmas=t, sample_sigmas=sample_sigmas)
        return patcher.model.apply_model(x, t, c_crossattn=ctx, y=y, guidance=guidance, transformer_options=to)

    return step


def paired_overhead(plain: list[float], pulid: list[float]) -> float:
    """Median over interleaved pairs of (PuLID call / adjacent plain call) - 1: robust to load drift on a
    shared machine, since both calls of a pair see the same background load."""
    return statistics.median(q / p for p, q in zip(plain, pulid)) - 1


def bootstrap_ci(plain: list[float], pulid: list[float], n: int = 4000, seed: int = 0) -> tuple[float, float]:
    rng = random.Random(seed)
    k = len(plain)
    stats = []
    for _ in range(n):
        idx = [rng.randrange(k) for _ in range(k)]
        stats.append(paired_overhead([plain[i] for i in idx], [pulid[i] for i in idx]))
    stats.sort()
    return stats[int(0.025 * n)], stats[int(0.975 * n) - 1]


def flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


def tensor_storages(root) -> dict[int, int]:
    seen, out, stack = set(), {}, [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or obj is None or isinstance(obj, (str, bytes, int, float, bool, type)):
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            out[obj.untyped_storage().data_ptr()] = obj.untyped_storage().nbytes()
        elif isinstance(obj, torch.nn.Module):
            stack.extend(obj.state_dict(keep_vars=True).values())
        elif isinstance(obj, dict):
            stack.extend([*obj.keys(), *obj.values()])
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        else:
            stack.extend(getattr(obj, "__dict__", {}).values())
            stack.extend(getattr(obj, s) for c in type(obj).__mro__ for s in getattr(c, "__slots__", ()) if hasattr(obj, s))
    return out


def clone_bytes(patcher) -> tuple[int, float]:
    def state(p):
        return [p.model_options, p.wrappers, p.callbacks, p.additional_models, p.attachments]

    before = tensor_storages(state(patcher))
    t0 = time.perf_counter()
    c = patcher.clone()
    dt = time.perf_counter() - t0
    after = tensor_storages(state(c))
    return sum(n for ptr, n in after.items() if ptr not in before), dt


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--comfyui", default=os.environ.get("COMFYUI_ROOT", "/opt/comfyui/ComfyUI-0.3.64"))
    ap.add_argument("--image-tokens", type=int, default=256, help="square grid; 256 = 256x256 px")
    ap.add_argument("--text-tokens", type=int, default=128)
    ap.add_argument("--large", action="store_true", help="1024 image + 512 text tokens")
    ap.add_argument("--calls", type=int, default=30, help="timed calls per model (interleaved)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--single", type=int, default=4)
    a = ap.parse_args()
    if a.large:
        a.image_tokens, a.text_tokens = 1024, 512
    setup(a.comfyui)
    import comfyui_version

    from comfyui_pulid_flux.pulid.patch import apply_pulid_flux

    torch.manual_seed(0)
    side = int(round(a.image_tokens ** 0.5))
    assert side * side == a.image_tokens, "--image-tokens must be a square number"
    print(f"ComfyUI {comfyui_version.__version__}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"fp32 CPU; Flux hidden 3072 / 24 heads, {a.depth} double + {a.single} single; "
          f"{a.image_tokens} image + {a.text_tokens} text tokens")
    plain = build_flux(a.depth, a.single)
    pm, pp, emb = build_pulid(a.depth, a.single)
    patched = apply_pulid_flux(plain, pp, emb, weight=1.0)

    x = torch.randn(1, 16, 2 * side, 2 * side)
    t = torch.full((1,), 0.5)
    ctx = torch.randn(1, a.text_tokens, 4096)
    y = torch.randn(1, 768)
    guidance = torch.full((1,), 4.0)
    schedule = torch.linspace(1, 0, 29)
    schedule[14] = 0.5
    inputs = (x, t, ctx, y, guidance)
    times = {"plain": [], "pulid": []}

    def measure(plain_opts, pulid_opts):
        steps = {"plain": step_fn(plain, plain_opts, inputs, schedule), "pulid": step_fn(patched, pulid_opts, inputs, schedule)}
        with torch.inference_mode():
            out_p, out_q = steps["plain"](), steps["pulid"]()
            print(f"PuLID changes the output: max |diff| = {float((out_p - out_q).abs().max()):.3g}")
            flops_plain = flops(steps["plain"])
            flops_ours = flops(steps["pulid"])
            img_tokens = torch.randn(1, a.image_tokens, 3072)
            flops_official_ca = sum(flops(lambda ca=ca: ca(emb.tokens, img_tokens)) for ca in pm.pulid_ca)
            for _ in range(a.warmup):
                steps["plain"](), steps["pulid"]()
            for i in range(a.calls):
                order = ("plain", "pulid") if i % 2 == 0 else ("pulid", "plain")
                for name in order:
                    t0 = time.perf_counter()
                    steps[name]()
                    times[name].append(time.perf_counter() - t0)
        return flops_plain, flops_ours, flops_official_ca

    flops_plain, flops_ours, flops_ca = run_context(plain, lambda po: run_context(patched, lambda qo: measure(po, qo)))
    med_p, med_q = statistics.median(times["plain"]), statistics.median(times["pulid"])
    overhead = paired_overhead(times["plain"], times["pulid"])
    lo, hi = bootstrap_ci(times["plain"], times["pulid"])
    analytic = flops_ca / flops_plain
    print(f"median step: plain {med_p * 1000:.1f} ms, Flux+PuLID {med_q * 1000:.1f} ms ({a.calls} interleaved calls each)")
    print(f"measured overhead (median of paired ratios): {overhead * 100:+.2f} % (bootstrap 95 % CI "
          f"{lo * 100:+.2f} ... {hi * 100:+.2f} %); ratio of medians {(med_q / med_p - 1) * 100:+.2f} %")
    print(f"analytic FLOP overhead (official per-step CA work incl. ID K/V): {analytic * 100:.2f} % "
          f"({flops_ca / 1e9:.2f} / {flops_plain / 1e9:.1f} GFLOP); counted on our patched step: "
          f"{(flops_ours / flops_plain - 1) * 100:.2f} % (ID K/V cached per run)")
    print(f"ratio measured / analytic: {overhead / analytic:.2f} (target <= 1.0)")
    copied, dt = clone_bytes(patched)
    print(f"downstream clone() of the patched MODEL: {copied} bytes of tensor storage copied ({dt * 1000:.1f} ms; target 0)")
    handed = {id(mp): mp for mp in patched.model_patches_models()}
    handed.update({id(mp): mp for mp in patched.get_nested_additional_models()})
    handed_params = sum(p.numel() for mp in handed.values() for p in mp.model.parameters())
    ca_params = sum(p.numel() for p in pm.pulid_ca.parameters())
    enc_params = sum(p.numel() for p in pm.pulid_encoder.parameters())
    enc_ids = {id(p) for p in pm.pulid_encoder.parameters()}
    enc_handed = sum(p.numel() for mp in handed.values() for p in mp.model.parameters() if id(p) in enc_ids)
    print(f"weights handed to ComfyUI for sampling: {handed_params / 1e6:.1f} M params in {len(handed)} ModelPatcher(s) "
          f"= the CAs ({ca_params / 1e6:.1f} M); IDFormer {enc_params / 1e6:.1f} M params, of which handed: {enc_handed}")


if __name__ == "__main__":
    main()
