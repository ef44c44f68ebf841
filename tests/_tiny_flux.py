"""Tiny real-ComfyUI Flux models, a tiny PuLID model and sampling helpers for CPU tests.

Everything is ComfyUI's own code: `supported_models.Flux` -> `model_base.Flux` (the real
`comfy.ldm.flux.model.Flux` at hidden size 64) in a `ModelPatcher`, sampled with `comfy.samplers`.
Call `conftest.setup_comfyui()` (or use the `comfyui` fixture) before using anything here.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from conftest import import_pack

import_pack()
from comfyui_pulid_flux.integration.handles import PulidFlux  # noqa: E402
from comfyui_pulid_flux.pulid.embedding import IDEmbedding  # noqa: E402
from comfyui_pulid_flux.pulid.model import PulidFluxModel  # noqa: E402

TINY_FLUX = dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=32, context_in_dim=48,
                 hidden_size=64, mlp_ratio=2.0, num_heads=2, depth=3, depth_single_blocks=5,
                 axes_dim=[8, 12, 12], theta=10000, patch_size=2, qkv_bias=True, guidance_embed=True)
TINY_ID_DIM = 32
TINY_ENCODER = dict(dim=32, depth=2, dim_head=8, heads=4, num_id_token=2, num_queries=8, output_dim=TINY_ID_DIM,
                    ff_mult=2, id_in_dim=24, vit_dim=16, mapping_hidden=24, num_vit_taps=1)
TINY_CA = dict(dim_head=16, heads=4)


def flux_unet_config(**overrides) -> dict:
    import comfy.ldm.flux.model

    cfg = {**TINY_FLUX, **overrides}
    if "txt_ids_dims" in {f.name for f in dataclasses.fields(comfy.ldm.flux.model.FluxParams)}:
        cfg.setdefault("txt_ids_dims", [])  # field added after 0.3.64
    return cfg


def _randomize(module: torch.nn.Module, seed: int, scale: float = 0.05) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("scale") or ".norm.query_norm." in name or ".norm.key_norm." in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * scale)


def tiny_flux_patcher(seed: int = 0, weight_dtype=torch.float32, manual_cast_dtype=None, state_dict=None,
                      **overrides):
    """ModelPatcher over a real model_base.Flux with random (or given) weights, CPU."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    mc = comfy.supported_models.Flux(flux_unet_config(**overrides))
    mc.set_inference_dtype(weight_dtype, manual_cast_dtype)
    model = mc.get_model({})
    dm = model.diffusion_model
    if state_dict is not None:
        names = set(dm.state_dict())

        def rename(k: str) -> str:  # 0.14+ RMSNorm keys: official "*.scale" is "*.weight"
            return k[: -len("scale")] + "weight" if k not in names and k.endswith(".scale") else k

        dm.load_state_dict({rename(k): v.to(weight_dtype) for k, v in state_dict.items()}, strict=True)
    else:
        fp32 = {k: torch.empty(v.shape) for k, v in dm.state_dict().items()}
        holder = torch.nn.Module()
        for k, v in fp32.items():
            holder.register_parameter(k.replace(".", "__"), torch.nn.Parameter(v))
        _randomize(holder, seed)
        dm.load_state_dict({k: getattr(holder, k.replace(".", "__")).data.to(weight_dtype) for k in fp32})
    dm.requires_grad_(False)
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


TINY_CHROMA = dict(image_model="chroma", in_channels=64, out_channels=64, context_in_dim=48, hidden_size=64,
                   mlp_ratio=2.0, num_heads=2, depth=3, depth_single_blocks=5, axes_dim=[8, 12, 12], theta=10000,
                   patch_size=2, qkv_bias=True, in_dim=64, out_dim=64, hidden_dim=32, n_layers=1)


def tiny_chroma_patcher(seed: int = 0, **overrides):
    """ModelPatcher over a real model_base.Chroma (comfy.ldm.chroma.model.Chroma at hidden size 64), CPU.
    Chroma's modulation table has room for 19 + 38 blocks; fewer blocks use its first entries."""
    import comfy.ldm.chroma.model
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    cfg = {**TINY_CHROMA, **overrides}
    fields = {f.name for f in dataclasses.fields(comfy.ldm.chroma.model.ChromaParams)}
    for name, default in (("txt_ids_dims", []), ("vec_in_dim", 32)):  # fields added after 0.3.64
        if name in fields:
            cfg.setdefault(name, default)
    mc = comfy.supported_models.Chroma(cfg)
    mc.set_inference_dtype(torch.float32, None)
    model = mc.get_model({})
    _randomize(model.diffusion_model, seed)
    model.diffusion_model.requires_grad_(False)
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def tiny_chroma_cond(seed: int = 0, tokens: int = 7):
    g = torch.Generator().manual_seed(seed + 200)
    # pooled_output: ComfyUI 0.3.64's Chroma takes Flux's encode_adm, which reads it (Chroma ignores the value)
    return [[torch.randn(1, tokens, TINY_CHROMA["context_in_dim"], generator=g), {"pooled_output": torch.zeros(1, 32)}]]


def tiny_pulid_model(hidden: int = 64, num_ca: int = 4, id_dim: int = TINY_ID_DIM, seed: int = 1,
                     operations=None, dtype=torch.float32) -> PulidFluxModel:
    enc = {**TINY_ENCODER, "output_dim": id_dim}
    m = PulidFluxModel(enc, dict(dim=hidden, kv_dim=id_dim, **TINY_CA), num_ca, operations=operations)
    _randomize(m, seed, scale=0.2)
    return m.to(dtype).eval().requires_grad_(False)


def pulid_patcher(pulid_model: PulidFluxModel, name: str = "tiny_pulid.safetensors") -> PulidFlux:
    """The PulidFlux handle the loader node builds."""
    return PulidFlux(pulid_model, name)


def tiny_embedding(n: int = 1, id_dim: int = TINY_ID_DIM, seed: int = 2, tokens: int = 8, uncond=True) -> IDEmbedding:
    g = torch.Generator().manual_seed(seed)
    return IDEmbedding(tokens=torch.randn(n, tokens, id_dim, generator=g),
                       uncond=torch.randn(1, tokens, id_dim, generator=g) if uncond else None)


def tiny_cond(seed: int = 0, tokens: int = 7, guidance: float = 3.5):
    g = torch.Generator().manual_seed(seed + 100)
    return [[torch.randn(1, tokens, TINY_FLUX["context_in_dim"], generator=g),
             {"pooled_output": torch.randn(1, TINY_FLUX["vec_in_dim"], generator=g), "guidance": guidance}]]


def sample(patcher, steps: int = 3, cfg: float = 1.0, batch: int = 1, size=(32, 32), seed: int = 0,
           positive=None, negative=None, sampler: str = "euler", scheduler: str = "simple"):
    """comfy.sample.sample with a tiny latent (16 channels, size in pixels)."""
    import comfy.sample

    latent = torch.zeros(batch, TINY_FLUX["in_channels"], size[0] // 8, size[1] // 8)
    noise = comfy.sample.prepare_noise(latent, seed)
    positive = positive or tiny_cond(0)
    negative = negative or tiny_cond(1, tokens=5)
    return comfy.sample.sample(patcher, noise, steps, cfg, sampler, scheduler, positive, negative, latent,
                               disable_pbar=True, seed=seed)


# --------------------------------------------------------------------------------------- memory
def tensor_storages(root, _seen=None, _out=None) -> dict[int, int]:
    """{storage data_ptr: nbytes} of every tensor reachable from `root` through containers, objects
    (__dict__ / __slots__), ModelPatchers and nn.Modules."""
    seen = set() if _seen is None else _seen
    out = {} if _out is None else _out
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or obj is None or isinstance(obj, (str, bytes, int, float, bool, type)):
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            if obj.device.type != "meta":
                st = obj.untyped_storage()
                out[st.data_ptr()] = st.nbytes()
            continue
        if isinstance(obj, torch.nn.Module):
            stack.extend(obj.state_dict(keep_vars=True).values())
            continue
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        else:
            stack.extend(getattr(obj, "__dict__", {}).values())
            for cls in type(obj).__mro__:
                for s in getattr(cls, "__slots__", ()):
                    if hasattr(obj, s):
                        stack.append(getattr(obj, s))
    return out


def patcher_state(patcher) -> list:
    """What a clone() can copy: options, wrappers, callbacks, additional models, attachments."""
    return [patcher.model_options, patcher.wrappers, patcher.callbacks, patcher.additional_models,
            patcher.attachments]


def bytes_copied_by_clone(patcher) -> int:
    before = tensor_storages(patcher_state(patcher))
    clone = patcher.clone()
    after = tensor_storages(patcher_state(clone))
    return sum(n for ptr, n in after.items() if ptr not in before)


# --------------------------------------------------------------------------------------- ComfyUI-like calls
def in_sampling_run(patcher, fn):
    """Run fn(run_model_options) inside the patcher's OUTER_SAMPLE wrappers, with a real CFGGuider as
    `executor.class_obj` and the run's private model_options, as CFGGuider.sample does."""
    import comfy.model_patcher
    import comfy.patcher_extension as pe
    import comfy.samplers

    guider = comfy.samplers.CFGGuider(patcher)
    guider.model_options = comfy.model_patcher.create_model_options_clone(patcher.model_options)
    to = guider.model_options.setdefault("transformer_options", {})
    pe.merge_nested_dicts(to.setdefault("wrappers", {}), patcher.wrappers, copy_dict1=False)
    wrappers = pe.get_all_wrappers(pe.WrappersMP.OUTER_SAMPLE, guider.model_options, is_model_options=True)
    executor = pe.WrapperExecutor.new_class_executor(lambda *a, **k: fn(guider.model_options), guider, wrappers)
    return executor.execute(None, None, None, None)


def call_options(run_model_options, sigmas, cond_or_uncond=(0,), sample_sigmas=None) -> dict:
    """transformer_options of one model call, built the way comfy.samplers._calc_cond_batch builds them."""
    import comfy.patcher_extension as pe

    to = pe.merge_nested_dicts({}, run_model_options["transformer_options"], copy_dict1=False)
    to["cond_or_uncond"] = list(cond_or_uncond)
    to["uuids"] = [None] * len(cond_or_uncond)
    to["sigmas"] = sigmas
    if sample_sigmas is not None:
        to["sample_sigmas"] = sample_sigmas
    return to


def comfy_forward(patcher, x, timestep, context, y, guidance, cond_or_uncond=(0,), sample_sigmas=None, **kwargs):
    """The raw Flux.forward output (APPLY_MODEL and DIFFUSION_MODEL wrappers, patchify, forward_orig with
    patches_replace) inside a run: BaseModel.apply_model's wrappers around a direct diffusion-model call (Flux's
    calculate_input is the identity, so the model sees `x` as apply_model would give it)."""
    import comfy.patcher_extension as pe

    base = patcher.model
    dm = base.diffusion_model

    def raw(x, t, c_concat, c_crossattn, control, transformer_options, **kw):
        return dm(x, t, c_crossattn, control=control, transformer_options=transformer_options, **kw)

    def call(mo):
        to = call_options(mo, timestep, cond_or_uncond, sample_sigmas)
        wrappers = pe.get_all_wrappers(pe.WrappersMP.APPLY_MODEL, to)
        executor = pe.WrapperExecutor.new_class_executor(raw, base, wrappers)
        return executor.execute(x, timestep, None, context, None, to, y=y, guidance=guidance, **kwargs)

    return in_sampling_run(patcher, call)


# --------------------------------------------------------------------------------------- golden models
def golden_latent_packing(g) -> tuple[int, int]:
    """(latent channels, patch size) of a Flux golden, from its tensor shapes: official prepare() packs
    (B, C, H, W) latents into (B, H/p * W/p, C*p*p) tokens, and FluxParams.in_channels is that packed width."""
    _, c, h, w = g.io["in.noise_unpacked"].shape
    tokens, packed = g.io["in.img"].shape[1:]
    patch = math.isqrt(packed // c)
    assert c * patch * patch == packed == g.meta["flux_params"]["in_channels"], (c, packed, g.meta["flux_params"])
    assert tokens == (h // patch) * (w // patch), (tokens, h, w, patch)
    return c, patch


def golden_flux_patcher(g):
    """ComfyUI's Flux built from the golden sidecar's official FluxParams, with the golden weights."""
    p = dict(g.meta["flux_params"])
    channels, patch = golden_latent_packing(g)
    p.pop("in_channels")
    sd = {k: v for k, v in g.weights.items() if not k.startswith("pulid_ca.")}
    return tiny_flux_patcher(state_dict=sd, in_channels=channels, out_channels=channels, patch_size=patch, **p)


def golden_pulid_model(g) -> PulidFluxModel:
    c = dict(g.meta["pulid_ca_constructor"])
    c.pop("class")
    count = c.pop("count")
    m = PulidFluxModel({**TINY_ENCODER, "output_dim": c["kv_dim"]}, c, count)
    _randomize(m.pulid_encoder, 3)
    prefix = "pulid_ca."
    m.pulid_ca.load_state_dict({k[len(prefix):]: v for k, v in g.weights.items() if k.startswith(prefix)}, strict=True)
    return m.eval().requires_grad_(False)


# --------------------------------------------------------------------------------------- instrumentation
def instrument_tables(monkeypatch) -> list:
    """Log every ID term the patch computes: ("attend", ca_index, rows, select, image_tokens, output, table),
    for the folded and the reference tables alike (clear the list between runs)."""
    from comfyui_pulid_flux.pulid import fold

    log: list = []
    for cls in (fold.FoldedID, fold.ReferenceID):
        real = cls.residual

        def logged(self, ca_index, img, select, *cast, real=real):
            out = real(self, ca_index, img, select, *cast)
            log.append(("attend", ca_index, img.shape[0], select, img.shape[1], out, self))
            return out

        monkeypatch.setattr(cls, "residual", logged)
    real_fold = fold.fold_ca

    def counted(ca, ids):
        log.append(("fold", ca, ids.shape[0]))
        return real_fold(ca, ids)

    monkeypatch.setattr(fold, "fold_ca", counted)
    return log


def structure(obj, _depth: int = 0):
    """Snapshot of nested dicts/lists down to the identity of every leaf (for 'nothing changed' checks)."""
    if _depth > 12:
        return ("deep", id(obj))
    if isinstance(obj, dict):
        return ("dict", id(obj), tuple((repr(k), structure(v, _depth + 1)) for k, v in obj.items()))
    if isinstance(obj, (list, tuple)):
        return (type(obj).__name__, id(obj), tuple(structure(v, _depth + 1) for v in obj))
    return ("leaf", id(obj))


def module_attrs(module: torch.nn.Module) -> dict:
    """Attribute names of a module and all its submodules (to assert nothing was set on them)."""
    return {name: sorted(m.__dict__) for name, m in module.named_modules()}
