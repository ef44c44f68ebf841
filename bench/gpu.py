#!/usr/bin/env python3
"""Capacity figures of PuLID-Flux: step time, peak VRAM, Apply (fold) and Encode time, per VRAM mode.

On CUDA: a full-size Flux.1 (19 + 38 blocks, width 3072) through ComfyUI's own model classes, random weights
generated on the GPU (no download) and kept on the offload device as a loader leaves them, at 1024x1024, with
bf16 and fp8 (e4m3fn, bf16 compute) weights. One process per configuration (ComfyUI reads its VRAM flags at
import): normal (legacy patcher), --lowvram, --novram, Dynamic VRAM (0.33+, comfy-aimdo, as main.py starts it).
Side by side in each: one model call of plain Flux, PuLID folded and unfolded (medians of interleaved rounds,
each loaded through load_models_gpu) and their peak VRAM (torch.cuda.max_memory_allocated) as ratios to plain;
the folded form's precision against the unfolded one; the Apply time (fold, cold); the Encode time of one
reference through the real EVA02-L-336 and IDFormer sizes (random weights; no onnxruntime face models); whole
sampling runs (weight 0, weight 1 twice, plain), the second weight-1 run's ratio to weight 0 next to the step
ratio. Without CUDA (or --tiny): the same on a tiny configuration on the CPU; its times mean nothing.

    COMFYUI_ROOT=~/.cache/comfyui-pulid-flux/ComfyUI-0.33.0 python bench/gpu.py [--json out.json] [--tiny]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACK = "comfyui_pulid_flux"
CUDA_CONFIGS = ["bf16/normal", "fp8/normal", "bf16/lowvram", "bf16/novram", "bf16/dynamic", "fp8/dynamic"]
TINY_CONFIGS = ["fp32/cpu", "fp8/cpu"]
VARIANTS = ("plain", "folded", "unfolded")


def setup(comfy_root: str, mode: str) -> None:
    """ComfyUI on sys.path with the configuration's VRAM flags set before model_management reads them; the
    pack imported as a package. Dynamic VRAM is started the way main.py starts it (before torch sees CUDA)."""
    sys.path.insert(0, comfy_root)
    sys.path.insert(0, str(ROOT / "tests"))
    import comfy.cli_args

    a = comfy.cli_args.args
    a.cpu = mode == "cpu"
    a.lowvram, a.novram = mode == "lowvram", mode == "novram"
    if hasattr(a, "disable_dynamic_vram"):
        a.disable_dynamic_vram = mode != "dynamic"
    if mode == "dynamic":
        import comfy_aimdo.control as aimdo

        for kwargs in ({"simple_vram_headroom": None, "nvml_pressure": True}, {"simple_vram_headroom": None}, {}):
            try:
                aimdo.init(**kwargs)
                break
            except TypeError:
                continue
    import comfy.model_management as mm

    if mode == "dynamic":
        import comfy.memory_management
        import comfy.model_patcher

        devices = mm.get_all_torch_devices()
        try:
            ok = aimdo.init_devices((d.index, int(a.vram_headroom * 1024**3)) for d in devices)
        except TypeError:
            ok = aimdo.init_devices(d.index for d in devices)
        if not ok:
            raise RuntimeError("comfy-aimdo could not start: no Dynamic VRAM here")
        comfy.model_patcher.CoreModelPatcher = comfy.model_patcher.ModelPatcherDynamic
        comfy.memory_management.aimdo_enabled = True
    spec = importlib.util.spec_from_file_location(PACK, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[PACK] = mod
    spec.loader.exec_module(mod)


def randomize(module, seed: int, gen_device, store_device, dtype=None) -> None:
    """Every parameter replaced by random values generated on gen_device, stored on store_device (std 0.02;
    norm scales around 1), in dtype or the parameter's own dtype. Works on meta-device modules."""
    import torch

    g = torch.Generator(device=gen_device).manual_seed(seed)
    gen_dtype = torch.bfloat16 if torch.device(gen_device).type == "cuda" else torch.float32
    for mname, mod in module.named_modules():
        for pname, p in list(mod.named_parameters(recurse=False)):
            t = torch.randn(p.shape, generator=g, device=gen_device, dtype=gen_dtype) * 0.02
            if "norm" in f"{mname}.{pname}" and pname in ("weight", "scale"):
                t += 1.0
            setattr(mod, pname, torch.nn.Parameter(t.to(dtype or p.dtype).to(store_device), requires_grad=False))


def build(weights: str, tiny: bool):
    """(Flux ModelPatcher, PulidFlux handle, EvaClipModel handle, geometry) with random weights."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.ops
    import comfy.supported_models
    import torch

    from comfyui_pulid_flux.encoders import EVA02_CLIP_L_336, EvaVisionTower
    from comfyui_pulid_flux.integration.handles import EvaClipModel, PulidFlux, side_model_dtype
    from comfyui_pulid_flux.pulid.config import PulidFluxConfig
    from comfyui_pulid_flux.pulid.model import PulidFluxModel

    dev, off = mm.get_torch_device(), mm.unet_offload_device()
    if tiny:
        import _tiny_faces
        import _tiny_flux

        flux = _tiny_flux.flux_unet_config()
        eva_cfg = _tiny_faces.tiny_eva_config()
        pcfg = PulidFluxConfig(flux_double_blocks=flux["depth"], flux_single_blocks=flux["depth_single_blocks"],
                               flux_hidden=flux["hidden_size"], ca_dim_head=16, ca_heads=4, id_dim=32,
                               num_id_queries=8, encoder_dim=32, encoder_dim_head=8, encoder_heads=4,
                               num_id_token=2, mapping_hidden=24, clip_embed_dim=eva_cfg.embed_dim,
                               vit_width=eva_cfg.width)
        side, tokens = 256, 64  # image side in pixels, text tokens
    else:
        from step_overhead import flux_config

        flux, eva_cfg, pcfg, side, tokens = flux_config(19, 38), EVA02_CLIP_L_336, PulidFluxConfig(), 1024, 512
    mc = comfy.supported_models.Flux(flux)
    compute = torch.bfloat16 if dev.type == "cuda" else torch.float32
    store = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp8": torch.float8_e4m3fn}[weights]
    mc.set_inference_dtype(store, None if store == compute else compute)
    model = mc.get_model({}, device="meta")
    randomize(model.diffusion_model, 0, dev, off, store)
    model.device = off  # where a loader leaves the weights
    cls = getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher)  # as core loaders
    flux_patcher = cls(model, load_device=dev, offload_device=off)
    sdt = side_model_dtype(dev)
    pm = PulidFluxModel.from_config(pcfg, operations=comfy.ops.manual_cast, device="meta", dtype=sdt)
    randomize(pm, 1, dev, off)
    tower = EvaVisionTower.empty(eva_cfg)
    randomize(tower, 2, dev, off, sdt)
    tower.to(dtype=sdt)  # its RoPE buffers too, as build_eva_clip does
    geometry = dict(hidden=flux["hidden_size"], double=flux["depth"], single=flux["depth_single_blocks"],
                    image_px=side, image_tokens=(side // 16) ** 2, text_tokens=tokens, weights=str(store),
                    compute=str(compute), id_tokens=pcfg.num_id_queries, num_ca=pcfg.num_ca, side_dtype=str(sdt))
    return flux_patcher, PulidFlux(pm.eval(), "random PuLID"), EvaClipModel(tower.eval(), "random EVA"), geometry


def timed(fn, repeat: int = 1) -> tuple[float, object]:
    """(best seconds, last result) of fn, with the GPU synchronised around each call."""
    import torch

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    best, out = math.inf, None
    for _ in range(repeat):
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best, out


def peak(reset: bool = False) -> int | None:
    """torch.cuda.max_memory_allocated (None without CUDA); reset: start a new peak."""
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.reset_peak_memory_stats() if reset else torch.cuda.max_memory_allocated()


def encode(pulid, eva, repeat: int):
    """(seconds, (tokens, uncond)): one reference through EVA and the IDFormer, loaded as Encode loads them."""
    import comfy.model_management as mm
    import torch

    from comfyui_pulid_flux.encoders import assemble_id_cond

    mm.load_models_gpu([pulid.encoder_patcher, eva.patcher], force_full_load=True)
    cfg, enc = eva.tower.config, pulid.model.pulid_encoder
    w = eva.tower.trunk.patch_embed.proj.weight
    image = torch.rand(1, 3, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(3))
    arcface = torch.randn(1, 512, generator=torch.Generator().manual_seed(4))
    dev, dt = pulid.encoder_patcher.load_device, enc.latents.dtype

    def run():
        with torch.no_grad():
            pool, taps = eva.tower(image.to(w.device, w.dtype))
            id_cond = assemble_id_cond(arcface[:, :enc.id_in_dim - pool.shape[-1]], pool.float().cpu())
            return enc(id_cond.to(dev, dt), [t.to(dev, dt) for t in taps]).float().cpu()

    seconds, tokens = timed(run, repeat)
    with torch.no_grad():
        uncond = enc.uncond_id(cfg.num_tokens).float().cpu()
    return seconds, (tokens, uncond)


def call_inputs(flux_patcher, geometry, seed=5):
    import torch

    dm = flux_patcher.model.diffusion_model
    g = torch.Generator().manual_seed(seed)
    latent = geometry["image_px"] // 8
    x = torch.randn(1, 16, latent, latent, generator=g)
    ctx = torch.randn(1, geometry["text_tokens"], dm.params.context_in_dim, generator=g)
    y = torch.randn(1, dm.params.vec_in_dim, generator=g)
    return x, ctx, y


def step_figures(models: dict, geometry: dict, rounds: int, calls: int) -> tuple[dict, dict, float]:
    """Median seconds and peak bytes of one model call per variant, interleaved over rounds (each round loads
    the variant through load_models_gpu, Flux + the ID table, as sampling does); and the precision of the folded
    form in the compute dtype: max |folded - unfolded| / max |folded - plain| of one call's output."""
    import comfy.model_management as mm
    import torch
    from step_overhead import run_context, step_fn

    base = models["plain"]
    x, ctx, y = call_inputs(base, geometry)
    dev = base.load_device  # float32 inputs, as samplers pass them: apply_model casts to the compute dtype
    inputs = (x.to(dev), torch.full((1,), 0.5, device=dev), ctx.to(dev), y.to(dev), torch.full((1,), 3.5, device=dev))
    schedule = torch.linspace(1, 0, 29)
    schedule[14] = 0.5
    times, peaks, outs = {n: [] for n in models}, {n: 0 for n in models}, {}
    names = list(models)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            mm.load_models_gpu([models[name]])
            peak(reset=True)

            def measure(options, name=name):
                step = step_fn(models[name], options, inputs, schedule)
                with torch.inference_mode():
                    outs[name] = step().float().cpu()  # warm-up (kernels, caches)
                    for _ in range(calls):
                        times[name].append(timed(step)[0])

            run_context(models[name], measure)
            p = peak()
            peaks[name] = None if p is None else max(peaks[name], p)
    precision = float((outs["folded"] - outs["unfolded"]).abs().max() / (outs["folded"] - outs["plain"]).abs().max())
    return {n: statistics.median(v) for n, v in times.items()}, peaks, precision


def sampling_runs(base, patched, geometry, steps: int) -> dict:
    """Seconds of whole comfy.sample runs: weight 0 (the node returns the model itself), weight 1 twice, plain."""
    import comfy.sample

    x, ctx, y = call_inputs(base, geometry, seed=6)
    latent = x * 0
    cond = [[ctx, {"pooled_output": y, "guidance": 3.5}]]

    def run(model):
        noise = comfy.sample.prepare_noise(latent, 0)
        return comfy.sample.sample(model, noise, steps, 1.0, "euler", "simple", cond, cond, latent,
                                   disable_pbar=True, seed=0)

    run(base)  # Flux loaded once, as in a server that already ran a plain graph
    out = {}
    for key, model in (("weight0", base), ("weight1_first", patched), ("weight1_second", patched),
                       ("plain_after", base)):
        peak(reset=True)
        out[key] = timed(lambda model=model: run(model))[0]
        out[key + "_peak_vram_bytes"] = peak()
    return out


def worker(name: str, tiny: bool, a) -> dict:
    import comfy.model_management as mm
    import comfyui_version
    import torch

    from comfyui_pulid_flux.integration.patch import apply_pulid_flux
    from comfyui_pulid_flux.pulid.embedding import IDEmbedding

    weights, mode = name.split("/")
    base, pulid, eva, geometry = build(weights, tiny)
    res = dict(name=name, weights=weights, vram_mode=mode, comfyui=comfyui_version.__version__,
               torch=torch.__version__, device=str(mm.get_torch_device()), patcher=type(base).__name__,
               side_patcher=type(pulid.encoder_patcher).__name__, geometry=geometry)
    if torch.cuda.is_available():
        res["device_name"] = torch.cuda.get_device_name()
        res["total_vram_bytes"] = torch.cuda.get_device_properties(0).total_memory
    try:  # a failure is a figure too (e.g. a VRAM mode the encoders do not survive): reported, not fatal
        res["encode_s"], (tokens, uncond) = encode(pulid, eva, a.repeat)
    except Exception as e:  # noqa: BLE001
        res["encode_error"] = f"{type(e).__name__}: {e}"[:300]
        tokens, uncond = torch.randn(2, 1, geometry["id_tokens"], pulid.model.id_dim)
    emb = IDEmbedding(tokens=tokens, uncond=uncond)
    models, res["apply_s"], res["table_bytes"] = {"plain": base}, {}, {}
    for variant in ("folded", "unfolded"):
        res["apply_s"][variant], models[variant] = timed(lambda v=variant: apply_pulid_flux(
            base, pulid, emb, uncond_mode="none", folded=v == "folded"))
        table = models[variant].model_patches_models()[0].model
        res["table_bytes"][variant] = sum(t.numel() * t.element_size() for t in table.parameters())
    res["step_s"], res["peak_vram_bytes"], res["precision_rel"] = step_figures(models, geometry, a.rounds, a.calls)
    step, peaks = res["step_s"], res["peak_vram_bytes"]
    res["step_ratio"] = {v: step[v] / step["plain"] for v in ("folded", "unfolded")}
    res["peak_vram_ratio"] = None if peaks["plain"] is None else {v: peaks[v] / peaks["plain"] for v in VARIANTS[1:]}
    res["expected_ratio"] = res["step_ratio"]["folded"]  # what the ID's share of a step predicts
    try:
        runs = res["runs_s"] = sampling_runs(base, models["folded"], geometry, a.sample_steps)
        res["second_run_ratio"] = runs["weight1_second"] / runs["weight0"]
    except Exception as e:  # noqa: BLE001
        res["runs_error"] = f"{type(e).__name__}: {e}"[:300]
    return res


def table(results: list[dict]) -> str:
    head = (f"{'config':14} {'patcher':20} {'variant':9} {'step ms':>9} {'x plain':>8} {'peak GiB':>9} "
            f"{'x plain':>8} {'apply s':>8} {'encode s':>9}")
    lines = [head, "-" * len(head)]
    for r in results:
        if "error" in r:
            lines.append(f"{r['name']:14} failed: {r['error']}")
            continue
        for v in VARIANTS:
            ratio = 1.0 if v == "plain" else r["step_ratio"][v]
            vr = "-" if r["peak_vram_ratio"] is None else "1.000" if v == "plain" else f"{r['peak_vram_ratio'][v]:.3f}"
            apply = "" if v == "plain" else f"{r['apply_s'][v]:.3f}"
            enc = "" if v != "plain" else f"{r['encode_s']:.4f}" if "encode_s" in r else "failed"
            lines.append(f"{r['name']:14} {r['patcher']:20} {v:9} {r['step_s'][v] * 1000:9.2f} {ratio:8.3f} "
                         f"{'-' if r['peak_vram_bytes'][v] is None else format(r['peak_vram_bytes'][v] / 2**30, '.2f'):>9} {vr:>8} {apply:>8} {enc:>9}")
        lines.append(f"{'':14} folded vs unfolded output: max diff / PuLID's effect = {r['precision_rel']:.2e}")
        for key in ("encode_error", "runs_error"):
            if key in r:
                lines.append(f"{'':14} {key}: {r[key]}")
        if "runs_s" in r:
            lines.append(f"{'':14} sampling runs (s): " + ", ".join(
                f"{k} {v:.3f}" for k, v in r["runs_s"].items() if not k.endswith("bytes")) +
                f"; weight-1 second run / weight 0 = {r['second_run_ratio']:.3f} (step ratio predicts "
                f"{r['expected_ratio']:.3f})")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--comfyui", default=os.environ.get("COMFYUI_ROOT", os.path.expanduser(
        "~/.cache/comfyui-pulid-flux/ComfyUI-0.33.0")))
    ap.add_argument("--json", default="bench_gpu.json", help="where the results go")
    ap.add_argument("--tiny", action="store_true", help="the tiny CPU configuration even when CUDA is present")
    ap.add_argument("--configs", nargs="*", help=f"subset of {CUDA_CONFIGS} (CUDA) or {TINY_CONFIGS}")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calls", type=int, default=3, help="timed model calls per variant and round")
    ap.add_argument("--repeat", type=int, default=3, help="Encode repeats (best)")
    ap.add_argument("--sample-steps", type=int, default=4)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per CUDA configuration")
    a = ap.parse_args(argv)
    if a.worker:  # one configuration in this process
        if a.tiny:
            import torch

            torch.set_num_threads(1)  # tiny tensors: threads only contend
        setup(a.comfyui, a.worker.split("/")[1])
        Path(a.json).write_text(json.dumps(worker(a.worker, a.tiny, a), indent=1))
        return 0
    cuda = not a.tiny and cuda_present()
    results = []
    if cuda:  # each configuration in its own process: ComfyUI reads the VRAM flags once
        for name in a.configs or CUDA_CONFIGS:
            results.append(run_subprocess(name, a, tiny=False))
            print(f"{name}: {'failed' if 'error' in results[-1] else 'done'}", flush=True)
    else:
        import torch

        torch.set_num_threads(1)  # tiny tensors: threads only contend
        setup(a.comfyui, "cpu")
        results = [worker(name, True, a) for name in a.configs or TINY_CONFIGS]
    text = table(results)
    print(text)
    Path(a.json).write_text(json.dumps({"mode": "cuda" if cuda else "cpu-tiny", "configs": results}, indent=1))
    print(f"written: {a.json}")
    return 0


def cuda_present() -> bool:
    """Asked in a child process: importing torch here would touch CUDA before Dynamic VRAM starts."""
    code = "import torch; print(int(torch.cuda.is_available()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    return out.stdout.strip() == "1"


def run_subprocess(name: str, a, tiny: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        part = Path(tmp) / "part.json"
        cmd = [sys.executable, __file__, "--worker", name, "--json", str(part), "--comfyui", a.comfyui,
               "--rounds", str(a.rounds), "--calls", str(a.calls), "--repeat", str(a.repeat),
               "--sample-steps", str(a.sample_steps)] + ["--tiny"] * tiny
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
        except subprocess.TimeoutExpired:
            return {"name": name, "error": f"timed out after {a.timeout} s"}
        if p.returncode or not part.exists():
            return {"name": name, "error": (p.stderr.strip().splitlines() or ["no output"])[-1][:300]}
        return json.loads(part.read_text())


if __name__ == "__main__":
    sys.exit(main())
