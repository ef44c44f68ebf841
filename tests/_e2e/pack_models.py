"""Tiny random-weight files of the pack's own models, in their real formats and folders.

Layout under ``<cache>/pack`` (mapped into ComfyUI by extra_model_paths.yaml):

* ``pulid/pulid_flux_tiny.safetensors``: the official key layout (``pulid_encoder.*``, ``pulid_ca.*``) with
  CA width 3072 (the real Flux hidden size, which ComfyUI's Flux detection fixes), 2 CAs for the 1 double
  + 1 single block tiny DiT, and small IDFormer / ID widths with the official head widths (one head each,
  what the loader assumes); written by tests/_writers.py ``save_pulid_file``;
* ``clip/eva_clip_tiny.safetensors``, ``insightface/models/antelopev2/*.onnx`` and ``facexlib/*.pth`` from
  the encoders' tiny builders (tests/_tiny_faces.py), so the real insightface / facexlib / timm code runs.
"""

from __future__ import annotations

import math
from pathlib import Path

from .cache import CACHE_DIR, ensure, locked

PULID_FILE = "pulid_flux_tiny.safetensors"
EVA_FILE = "eva02_clip_tiny.pt"  # official eva_clip layout (visual.*), torch .pt
GENERATOR_REV = 2
FLUX_HIDDEN = 3072  # ComfyUI's Flux detection reads the hidden size from the checkpoint only as 3072


def tiny_pulid_model(vit_dim: int, clip_embed_dim: int, seed: int = 0, arcface_dim: int = 512):
    """A PulidFluxModel sized for the tiny DiT (1 double + 1 single block → 2 CAs) and a tiny EVA tower."""
    import torch

    from comfyui_pulid_flux.pulid.config import PulidFluxConfig
    from comfyui_pulid_flux.pulid.model import PulidFluxModel

    cfg = PulidFluxConfig(flux_double_blocks=1, flux_single_blocks=1, flux_hidden=FLUX_HIDDEN, ca_heads=1, id_dim=64,
                          encoder_dim=64, encoder_heads=1, ff_mult=2, mapping_hidden=64, arcface_dim=arcface_dim,
                          clip_embed_dim=clip_embed_dim, vit_width=vit_dim)
    model = PulidFluxModel.from_config(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif p.ndim == 1:  # LayerNorm scales
                p.fill_(1.0)
            else:
                # unit-gain init: the tiny CA must move the image visibly at weight 1
                fan_in = p.shape[0] if name.endswith("proj_out") else p.shape[-1]  # proj_out is used as x @ W
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))
    return model


def ensure_pulid(cache: Path, manifest: dict, vit_dim: int, clip_embed_dim: int) -> Path:
    def write(path: Path) -> None:
        from _writers import save_pulid_file

        save_pulid_file(tiny_pulid_model(vit_dim, clip_embed_dim), path)

    spec = {"kind": "pulid", "vit_dim": vit_dim, "clip_embed_dim": clip_embed_dim, "rev": GENERATOR_REV}
    return ensure(manifest, cache, f"pack/pulid/{PULID_FILE}", spec, write)


def ensure_pack_models(cache: Path = CACHE_DIR) -> dict[str, Path]:
    """Make (or reuse) every pack model; returns {"pulid", "eva", "antelopev2", "facexlib"} paths."""
    import _tiny_faces as tf

    eva_cfg = tf.tiny_eva_config()
    rev = {"rev": GENERATOR_REV, "tiny_faces": tf._VERSION}
    with locked(cache) as manifest:
        out = {"pulid": ensure_pulid(cache, manifest, vit_dim=eva_cfg.width, clip_embed_dim=eva_cfg.embed_dim)}
        out["eva"] = ensure(manifest, cache, f"pack/clip/{EVA_FILE}", {"kind": "eva", "layout": "official", **rev},
                            lambda p: tf.make_tiny_eva_checkpoint(str(p), layout="official"))
        out["antelopev2"] = ensure(manifest, cache, "pack/insightface/models/antelopev2", {"kind": "antelopev2", **rev},
                                   lambda p: tf.make_tiny_antelopev2(str(p)))
        out["facexlib"] = ensure(manifest, cache, "pack/facexlib", {"kind": "facexlib", "blind": True, **rev},
                                 lambda p: blind_retinaface(tf.make_tiny_facexlib(str(p))))
    return out


def blind_retinaface(folder: str) -> str:
    """Make the random RetinaFace never fire: its class heads answer "background" everywhere.

    Random RetinaFace weights give arbitrary boxes, so the facexlib alignment source would "find" a face
    in any image; blind, it finds none, the encoders fall back to insightface's landmarks (their
    documented path), and an image without a bright blob really has no face for the whole pipeline.
    """
    import torch

    path = Path(folder) / "detection_Resnet50_Final.pth"
    sd = torch.load(path, map_location="cpu", weights_only=True)
    for key in [k for k in sd if k.startswith("ClassHead.")]:
        if key.endswith("weight"):
            sd[key] = torch.zeros_like(sd[key])
        else:  # (anchors * 2,) logits: background +10, face -10
            sd[key] = torch.tensor([10.0, -10.0], dtype=sd[key].dtype).repeat(sd[key].numel() // 2)
    torch.save(sd, path)
    return folder


def model_paths_yaml_sections(cache: Path = CACHE_DIR) -> dict[str, dict[str, str]]:
    """extra_model_paths.yaml sections mapping the tiny files in (it defines the pack's keys on purpose:
    the pack must keep these paths when it registers its folders)."""
    return {"pulid_flux_tiny": {
        "base_path": str(cache),
        "diffusion_models": "comfy/diffusion_models",
        "vae": "comfy/vae",
        "text_encoders": "comfy/text_encoders",
        "clip": "pack/clip",
        "pulid": "pack/pulid",
        "insightface": "pack/insightface",
        "facexlib": "pack/facexlib",
    }}
