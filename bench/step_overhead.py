#!/usr/bin/env python3
"""Step overhead, MACs, bytes held and compile counts of the PuLID Flux patch: plain, unfolded, folded.

Full width: Flux hidden 3072 / 24 heads, depth reduced to 2 double + 4 single blocks (1 + 1 CAs), fp32, CPU,
real ComfyUI code (model_base.Flux, ModelPatcher, apply_model with its wrappers, patches_replace); 256 image
+ 128 text tokens (--large: 1024 + 512). Calls are interleaved (rotating order) so drift hits all equally.
Prints, side by side: MACs per call (torch.utils.flop_counter, FLOPs / 2), median step times, the measured
overhead over plain with a bootstrap 95 % CI, the isolated patch cost per forward (patched minus plain) of
folded vs unfolded, bytes held for sampling vs the CA weights (one identity; with the uncond ID of true
CFG), bytes copied by a downstream clone(). Then, on a tiny config: eager per-call overhead and, compiled
as core's TorchCompileModel does (backend aot_eager, PyTorch attention), graph breaks, recompiles and the
compiled-over-plain time ratio. The folded / unfolded choice (issue 16 item 7) at 1 and 8 concatenated references
(32 and 256 ID tokens): both forms' measured patch time and MACs, the predicted cost, and which form the pack
picks. A side-by-side slot shows the diffusers adapter's figure when its bench wrote one (--diffusers-json).

    COMFYUI_ROOT=~/.cache/comfyui-pulid-flux/ComfyUI-0.33.0 python bench/step_overhead.py [--large] [--calls 20]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
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

    sys.path.insert(0, str(ROOT / "tests"))  # the tiny models and memory helpers of the tests
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

    from comfyui_pulid_flux.pulid.config import PulidFluxConfig
    from comfyui_pulid_flux.pulid.embedding import IDEmbedding
    from comfyui_pulid_flux.pulid.model import PulidFluxModel

    cfg = PulidFluxConfig(flux_double_blocks=depth, flux_single_blocks=single)
    with torch.device("meta"):  # full-size architecture; only the CAs get weights (sampling never runs the IDFormer)
        pm = PulidFluxModel.from_config(cfg).eval().requires_grad_(False)
    pm.pulid_ca.to_empty(device="cpu")
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in pm.pulid_ca.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02 + (1.0 if "norm" in name and "weight" in name else 0.0))
    g = torch.Generator().manual_seed(1)
    emb = IDEmbedding(tokens=torch.randn(1, cfg.num_id_queries, cfg.id_dim, generator=g),
                      uncond=torch.randn(1, cfg.num_id_queries, cfg.id_dim, generator=g))
    from comfyui_pulid_flux.integration.handles import PulidFlux

    return pm, PulidFlux(pm, "pulid_flux_full_width"), emb


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


def clone_bytes(patcher) -> tuple[int, float]:
    from _tiny_flux import patcher_state, tensor_storages

    before = tensor_storages(patcher_state(patcher))
    t0 = time.perf_counter()
    c = patcher.clone()
    dt = time.perf_counter() - t0
    after = tensor_storages(patcher_state(c))
    return sum(n for ptr, n in after.items() if ptr not in before), dt


def say(*args) -> None:
    """Results as they come (the full-width part takes minutes on a loaded CPU)."""
    print(*args, flush=True)


def held_bytes(patched, pm) -> tuple[int, int]:
    """(bytes of every tensor handed to ComfyUI for sampling, bytes of the CA weights)."""
    handed = {id(mp): mp for mp in patched.model_patches_models()}
    held = sum(t.numel() * t.element_size() for mp in handed.values() for t in mp.model.state_dict().values())
    ca = sum(t.numel() * t.element_size() for t in pm.pulid_ca.state_dict().values())
    return held, ca


def patch_only_call(model, inputs, schedule, n_txt: int, n_img: int, hidden: int):
    """One model call that runs only PuLID's share: the APPLY_MODEL wrappers (planning) and every block patch
    around an identity block, on fixed hidden states (Flux's own blocks are not run, so their noise is not
    measured). Every call is a new model call: nothing is carried over from a previous one."""
    import comfy.patcher_extension as pe

    x, t, ctx, _, _ = inputs
    dit = model.model_options["transformer_options"]["patches_replace"]["dit"]
    wrappers = pe.get_all_wrappers(pe.WrappersMP.APPLY_MODEL, {"wrappers": model.wrappers})
    g = torch.Generator().manual_seed(3)
    img, txt = torch.randn(1, n_img, hidden, generator=g), torch.randn(1, n_txt, hidden, generator=g)
    seq = torch.cat([txt, img], dim=1)

    def blocks(*args, **kwargs):
        for (kind, _), patch in dit.items():
            if kind == "double_block":
                patch({"img": img, "txt": txt}, {"original_block": lambda a: {"img": a["img"], "txt": a["txt"]}})
            else:
                patch({"img": seq}, {"original_block": lambda a: {"img": a["img"]}})

    def call():
        to = {"cond_or_uncond": [0], "sigmas": t, "sample_sigmas": schedule}
        return pe.WrapperExecutor.new_class_executor(blocks, model.model, wrappers).execute(x, t, None, ctx, None, to)

    return call


def interleaved(steps: dict, calls: int, warmup: int) -> dict:
    times = {name: [] for name in steps}
    names = list(steps)
    for _ in range(warmup):
        for f in steps.values():
            f()
    for i in range(calls):
        for name in names[i % len(names):] + names[:i % len(names)]:
            t0 = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def fold_choice(plain, pulid, pm, inputs, schedule, a) -> list[dict]:
    """Folded vs unfolded at each count of concatenated references (a.refs): measured patch-only time and MACs
    per forward, the pack's predicted MACs (pulid.fold.cost, when it has one), the form the pack builds by default."""
    from comfyui_pulid_flux.integration.patch import apply_pulid_flux
    from comfyui_pulid_flux.pulid import fold
    from comfyui_pulid_flux.pulid.embedding import IDEmbedding

    rows = []
    for refs in a.refs:
        tokens = refs * pm.pulid_encoder.num_queries  # concat fusion: every reference's tokens side by side
        emb = IDEmbedding(tokens=torch.randn(1, tokens, pm.id_dim, generator=torch.Generator().manual_seed(refs)))
        forms = {n: apply_pulid_flux(plain, pulid, emb, uncond_mode="none", folded=n == "folded")
                 for n in ("folded", "unfolded")}
        table = apply_pulid_flux(plain, pulid, emb, uncond_mode="none").model_patches_models()[0].model
        picked = "unfolded" if hasattr(table, "cas") else "folded"  # the reference table holds the CA modules
        calls = {n: patch_only_call(m, inputs, schedule, a.text_tokens, a.image_tokens, 3072) for n, m in forms.items()}
        with torch.inference_mode():
            macs = {n: flops(f) // 2 for n, f in calls.items()}  # the counter misses SDPA on the CPU (2·inner·T)
            med = {n: statistics.median(v) for n, v in interleaved(calls, 2 * a.calls, a.warmup).items()}
        pf, pu = fold.cost(pm, tokens) if hasattr(fold, "cost") else (None, None)
        row = dict(refs=refs, tokens=tokens, time_s=med, macs=macs, predicted=(pf, pu), picked=picked,
                   by_time=min(med, key=med.get), by_macs=min(macs, key=macs.get),
                   by_cost=None if pf is None else "folded" if pf <= pu else "unfolded")
        rows.append(row)
        predicted = "no fold.cost in this pack" if pf is None else f"fold.cost {pf / pu:.2f}x -> {row['by_cost']}"
        say(f"{refs} reference(s) = {tokens} ID tokens: folded {med['folded'] * 1000:.2f} ms / "
            f"{macs['folded'] / 1e9:.3f} GMAC, unfolded {med['unfolded'] * 1000:.2f} ms / {macs['unfolded'] / 1e9:.3f} "
            f"GMAC per forward; folded / unfolded: time {med['folded'] / med['unfolded']:.2f}x, MACs "
            f"{macs['folded'] / macs['unfolded']:.2f}x, predicted {predicted}; cheaper by time {row['by_time']}, by "
            f"MACs {row['by_macs']}; the pack picks {picked}{'' if picked == row['by_macs'] else ' (NOT the cheaper)'}")
    return rows


def diffusers_slot(path: str, comfy_ratio: float) -> None:
    """Side by side with the diffusers adapter, whose bench writes {"label", "step_s": {"plain", "pulid"}} to path."""
    d = json.loads(Path(path).read_text()) if os.path.exists(path) else None
    theirs = "not measured (no " + path + ")" if d is None else \
        f"{d['step_s']['pulid'] / d['step_s']['plain']:.3f}x ({d.get('label', path)})"
    say(f"PuLID / plain step time side by side: ComfyUI folded {comfy_ratio:.3f}x | diffusers adapter {theirs}")


def tiny_compile(comfy_root: str, calls: int) -> None:
    """Tiny config: eager per-call overhead, compiled graph breaks / recompiles, compiled-over-plain ratio."""
    os.environ.setdefault("COMFYUI_ROOT", comfy_root)
    import _tiny_flux as T
    import comfy.ldm.flux.math
    import comfy.ldm.modules.attention
    import torch._dynamo
    from comfy_api.torch_helpers import set_torch_compile_wrapper
    from torch._dynamo.utils import counters

    from comfyui_pulid_flux.integration.patch import apply_pulid_flux

    comfy.ldm.flux.math.optimized_attention = comfy.ldm.modules.attention.attention_pytorch  # the GPU default
    base = T.tiny_flux_patcher(depth=2, depth_single_blocks=4)
    pp = T.pulid_patcher(T.tiny_pulid_model(num_ca=2))
    models = {"plain": base, "pulid": apply_pulid_flux(base, pp, T.tiny_embedding())}

    def compiled(m):
        import comfy_extras.nodes_torch_compile as core

        c = m.clone()
        guard_filter = getattr(core, "skip_torch_compile_dict", None)  # the node's guard filter (newer ComfyUI)
        set_torch_compile_wrapper(model=c, backend="aot_eager",
                                  options=None if guard_filter is None else {"guard_filter_fn": guard_filter})
        return c

    results = {}
    for name, m in models.items():
        torch._dynamo.reset()
        counters.clear()
        c = compiled(m)
        T.sample(c, steps=4, cfg=2.0, negative=T.tiny_cond(1, tokens=7))
        breaks = sum(counters["graph_break"].values())
        recompiles = sum(counters["recompiles"].values()) if "recompiles" in counters else 0
        t = interleaved({"eager": lambda m=m: T.sample(m, steps=4, cfg=2.0, negative=T.tiny_cond(1, tokens=7)),
                         "compiled": lambda c=c: T.sample(c, steps=4, cfg=2.0, negative=T.tiny_cond(1, tokens=7))},
                        calls, 1)
        results[name] = (breaks, recompiles, statistics.median(t["eager"]), statistics.median(t["compiled"]))
    (b0, r0, e0, c0), (b1, r1, e1, c1) = results["plain"], results["pulid"]
    say(f"tiny config (hidden 64, 2+4 blocks, 4 steps, true CFG): eager PuLID/plain {e1 / e0:.2f}x; "
          f"compiled (aot_eager, PyTorch attention): graph breaks plain {b0} / PuLID {b1} (added {b1 - b0}), "
          f"recompiles plain {r0} / PuLID {r1} (added {r1 - r0}); compiled-over-plain: PuLID compiled / plain "
          f"compiled {c1 / c0:.2f}x, compiled / eager: plain {c0 / e0:.2f}x, PuLID {c1 / e1:.2f}x")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--comfyui", default=os.environ.get("COMFYUI_ROOT", os.path.expanduser("~/.cache/comfyui-pulid-flux/ComfyUI-0.3.64")))
    ap.add_argument("--image-tokens", type=int, default=256, help="square grid; 256 = 256x256 px")
    ap.add_argument("--text-tokens", type=int, default=128)
    ap.add_argument("--large", action="store_true", help="1024 image + 512 text tokens")
    ap.add_argument("--calls", type=int, default=12, help="timed calls per model (interleaved)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--single", type=int, default=4)
    ap.add_argument("--no-compile", action="store_true", help="skip the tiny-config compile section")
    ap.add_argument("--refs", type=int, nargs="*", default=[1, 8], help="concatenated references for the choice")
    ap.add_argument("--diffusers-json", default=str(ROOT / "bench_diffusers.json"),
                    help="the diffusers adapter's figure, shown side by side when present")
    a = ap.parse_args()
    if a.large:
        a.image_tokens, a.text_tokens = 1024, 512
    setup(a.comfyui)
    import comfyui_version

    from comfyui_pulid_flux.integration.patch import apply_pulid_flux

    torch.manual_seed(0)
    side = int(round(a.image_tokens ** 0.5))
    assert side * side == a.image_tokens, "--image-tokens must be a square number"
    say(f"ComfyUI {comfyui_version.__version__}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"fp32 CPU; Flux hidden 3072 / 24 heads, {a.depth} double + {a.single} single; "
          f"{a.image_tokens} image + {a.text_tokens} text tokens")
    plain = build_flux(a.depth, a.single)
    pm, pulid, emb = build_pulid(a.depth, a.single)
    models = {"plain": plain,
              "unfolded": apply_pulid_flux(plain, pulid, emb, uncond_mode="none", folded=False),
              "folded": apply_pulid_flux(plain, pulid, emb, uncond_mode="none")}
    inputs = (torch.randn(1, 16, 2 * side, 2 * side), torch.full((1,), 0.5), torch.randn(1, a.text_tokens, 4096),
              torch.randn(1, 768), torch.full((1,), 4.0))
    schedule = torch.linspace(1, 0, 29)
    schedule[14] = 0.5
    results = {}

    def measure(options: dict):
        # every timed call is a whole model call, so the first call of a run is one of them: the ID-only
        # work (folding) is done at apply, before any run
        steps = {n: step_fn(models[n], options[n], inputs, schedule) for n in models}
        with torch.inference_mode():
            outs = {n: f() for n, f in steps.items()}
            results["diff"] = float((outs["folded"] - outs["unfolded"]).abs().max())
            results["effect"] = float((outs["folded"] - outs["plain"]).abs().max())
            macs = results["macs"] = {n: flops(f) // 2 for n, f in steps.items()}
            say(f"PuLID changes the output by {results['effect']:.3g}; folded vs unfolded output: "
                f"{results['diff']:.3g}")
            extra = {n: macs[n] - macs["plain"] for n in ("unfolded", "folded")}
            say(f"MACs per call: plain {macs['plain'] / 1e9:.2f} G; PuLID adds unfolded {extra['unfolded'] / 1e9:.3f} "
                f"G, folded {extra['folded'] / 1e9:.3f} G -> folded / unfolded "
                f"{extra['folded'] / extra['unfolded']:.2f}x (target <= 0.3x)")
            results["times"] = interleaved(steps, a.calls, a.warmup)

    def nest(names, options):
        if not names:
            return measure(options)
        return run_context(models[names[0]], lambda o: nest(names[1:], {**options, names[0]: o}))

    nest(list(models), {})
    times, macs = results["times"], results["macs"]
    med = {n: statistics.median(v) for n, v in times.items()}
    extra = {n: macs[n] - macs["plain"] for n in ("unfolded", "folded")}
    for n in ("unfolded", "folded"):
        lo, hi = bootstrap_ci(times["plain"], times[n])
        say(f"median call: {n} {med[n] * 1000:.1f} ms vs plain {med['plain'] * 1000:.1f} ms: overhead "
              f"{paired_overhead(times['plain'], times[n]) * 100:+.2f} % (bootstrap 95 % CI {lo * 100:+.2f} ... "
              f"{hi * 100:+.2f} %; analytic MAC overhead {extra[n] / macs['plain'] * 100:.2f} %)")
    patch_calls = {n: patch_only_call(models[n], inputs, schedule, a.text_tokens, a.image_tokens, 3072)
                   for n in ("unfolded", "folded")}
    with torch.inference_mode():
        iso = interleaved(patch_calls, 4 * a.calls, a.warmup)
    cost = {n: statistics.median(v) for n, v in iso.items()}
    say(f"isolated patch cost per forward (planning + all PuLID block patches, median of {4 * a.calls} calls, each "
        f"a new model call): unfolded {cost['unfolded'] * 1000:.2f} ms, folded {cost['folded'] * 1000:.2f} ms -> "
        f"folded / unfolded {cost['folded'] / cost['unfolded']:.2f}x (target <= 0.35x)")
    held, ca = held_bytes(models["folded"], pm)
    held_u, _ = held_bytes(apply_pulid_flux(plain, pulid, emb, uncond_mode="uncond_id"), pm)
    held_ref, _ = held_bytes(models["unfolded"], pm)
    say(f"bytes held for sampling: folded {held / 2**20:.1f} MiB = {held / ca:.2f}x the CA weights ({ca / 2**20:.1f} "
          f"MiB; target <= 0.2x), with the uncond ID {held_u / ca:.2f}x (target <= 0.35x); unfolded "
          f"{held_ref / ca:.2f}x")
    fold_choice(plain, pulid, pm, inputs, schedule, a)
    diffusers_slot(a.diffusers_json, med["folded"] / med["plain"])
    copied, dt = clone_bytes(models["folded"])
    say(f"downstream clone() of the patched MODEL: {copied} bytes of tensor storage copied ({dt * 1000:.1f} ms)")
    if not a.no_compile:
        tiny_compile(a.comfyui, max(3, a.calls // 4))


if __name__ == "__main__":
    main()
