"""Tiny random-weight Flux DiT, Flux AE and CLIP-L files that ComfyUI's own loaders accept.

Tensor names and shapes come from ComfyUI's own classes built on the ``meta`` device, so the files load
with no missing or unexpected keys:

* Flux DiT (``diffusion_models/``, UNETLoader): detection hard-codes hidden 3072 / 24 heads / context 4096,
  so the smallest file is 1 double + 1 single block (~546M params, ~1 GB in bf16).
* Flux AE (``vae/``, VAELoader): fixed SD-style config, 16 latent channels.
* CLIP-L (``text_encoders/``): loaded through ``CLIPLoader(type="sd3")`` it yields a Flux-shaped
  CONDITIONING without the 4.8 GB T5-XXL, which cannot be shrunk.

ComfyUI must be importable (``comfy.cli_args.args.cpu = True`` set) before calling ``ensure_comfy_models``.
Weights: zero biases, unit norms, ``std = min(0.02, 1/sqrt(fan_in))`` keep every activation finite.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .cache import CACHE_DIR, ensure, locked

FLUX_FILE = "flux1-tiny-random.safetensors"
VAE_FILE = "flux-ae-tiny-random.safetensors"
CLIP_L_FILE = "clip_l-tiny-random.safetensors"
GENERATOR_REV = 1  # bump to invalidate every cached file of this module


def _meta_shapes(build) -> dict[str, tuple[int, ...]]:
    import torch

    with torch.device("meta"):
        module = build()
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def flux_shapes(double: int = 1, single: int = 1) -> dict[str, tuple[int, ...]]:
    import dataclasses

    import comfy.ldm.flux.model
    import comfy.ops

    # What comfy/model_detection.py infers for a Flux.1-dev file.
    cfg = dict(in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=4096, hidden_size=3072,
               mlp_ratio=4.0, num_heads=24, depth=double, depth_single_blocks=single, axes_dim=[16, 56, 56],
               theta=10000, patch_size=2, qkv_bias=True, guidance_embed=True)
    if "txt_ids_dims" in {f.name for f in dataclasses.fields(comfy.ldm.flux.model.FluxParams)}:
        cfg["txt_ids_dims"] = []  # field added after 0.3.64; Flux.1 leaves it empty
    return _meta_shapes(lambda: comfy.ldm.flux.model.Flux(operations=comfy.ops.disable_weight_init, **cfg))


def vae_shapes() -> dict[str, tuple[int, ...]]:
    from comfy.ldm.models.autoencoder import AutoencodingEngine

    # The config comfy/sd.py builds for a file whose decoder.conv_in takes 16 channels.
    dd = {"double_z": True, "z_channels": 16, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
          "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
    return _meta_shapes(lambda: AutoencodingEngine(
        regularizer_config={"target": "comfy.ldm.models.autoencoder.DiagonalGaussianRegularizer"},
        encoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Encoder", "params": dd},
        decoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Decoder", "params": dd}))


def clip_l_shapes() -> dict[str, tuple[int, ...]]:
    import comfy.clip_model
    import comfy.ops

    config = json.loads((Path(comfy.clip_model.__file__).parent / "sd1_clip_config.json").read_text())
    return _meta_shapes(lambda: comfy.clip_model.CLIPTextModel(config, None, None, comfy.ops.manual_cast))


def _is_norm(name: str, shape: tuple[int, ...]) -> bool:
    if len(shape) != 1:
        return False
    last = name.rsplit(".", 1)[-1]
    return last == "scale" or (last == "weight" and any(t in name.lower() for t in ("norm", "ln_", ".ln")))


def random_state_dict(shapes: dict[str, tuple[int, ...]], dtype, seed: int) -> dict:
    import torch

    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for name, shape in shapes.items():
        if name.endswith("bias"):
            t = torch.zeros(shape, dtype=dtype)
        elif _is_norm(name, shape):
            t = torch.ones(shape, dtype=dtype)
        else:
            fan_in = int(math.prod(shape[1:])) if len(shape) > 1 else int(shape[0])
            t = (torch.randn(shape, generator=gen) * min(0.02, 1.0 / math.sqrt(max(fan_in, 1)))).to(dtype)
        sd[name] = t.contiguous()
    return sd


def _writer(shapes_fn, dtype_name: str, seed: int):
    def write(path: Path) -> None:
        import torch
        from safetensors.torch import save_file

        sd = random_state_dict(shapes_fn(), getattr(torch, dtype_name), seed)
        save_file(sd, str(path), metadata={"pulid_flux_tiny": "random weights for tests"})

    return write


def ensure_comfy_models(cache: Path = CACHE_DIR) -> dict[str, Path]:
    """Make (or reuse) the three files; return {"unet"|"vae"|"clip_l": path} under ``cache/comfy``."""
    jobs = {
        "unet": (f"comfy/diffusion_models/{FLUX_FILE}", flux_shapes, "bfloat16", 0, {"double": 1, "single": 1}),
        "vae": (f"comfy/vae/{VAE_FILE}", vae_shapes, "bfloat16", 1, {}),
        "clip_l": (f"comfy/text_encoders/{CLIP_L_FILE}", clip_l_shapes, "float16", 2, {}),
    }
    out = {}
    with locked(cache) as manifest:
        for key, (rel, shapes_fn, dtype, seed, extra) in jobs.items():
            spec = {"kind": key, "dtype": dtype, "seed": seed, "rev": GENERATOR_REV, **extra}
            out[key] = ensure(manifest, cache, rel, spec, _writer(shapes_fn, dtype, seed))
    return out
