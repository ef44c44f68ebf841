"""Test-only readers and writers of model files in their real layouts (the runtime only reads, through
ComfyUI's ``comfy.utils.load_torch_file`` in nodes/loaders.py)."""

from __future__ import annotations

import os
import re

import torch
from conftest import import_pack

import_pack()
from comfyui_pulid_flux.encoders.eva_clip import EvaVisionConfig, EvaVisionTower, build_eva_clip  # noqa: E402
from comfyui_pulid_flux.encoders.eva_clip.checkpoint import NAME_PAIRS  # noqa: E402
from comfyui_pulid_flux.pulid.model import PulidFluxModel  # noqa: E402

_TIMM_TO_OFFICIAL = tuple((re.compile(re.escape(b) + ("" if b.endswith(".") else "$")), a) for a, b in NAME_PAIRS)


def read_file(path) -> dict[str, torch.Tensor]:
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def save_pulid_file(model: PulidFluxModel, path, dtype=None) -> None:
    """The official layout: `pulid_encoder.*` and `pulid_ca.*` in one safetensors file."""
    from safetensors.torch import save_file

    save_file({k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
               for k, v in model.state_dict().items()}, str(path))


def load_pulid(path, **kw) -> PulidFluxModel:
    return PulidFluxModel.from_state_dict(read_file(path), os.path.basename(path), **kw)


def timm_to_official_key(key: str) -> str:
    """Inverse of the runtime's official_to_timm_key, without the prefix."""
    for pat, rep in _TIMM_TO_OFFICIAL:
        key = pat.sub(rep, key)
    return key


def save_eva_checkpoint(tower: EvaVisionTower, path, *, layout: str = "official", dtype=torch.float16) -> None:
    """``official``: ``visual.<eva_clip key>`` in a torch ``.pt`` (as EVA02_CLIP_L_336_psz14_s6B.pt);
    ``open_clip``: ``visual.trunk.<timm key>`` safetensors; ``timm``: bare keys safetensors."""
    sd = {k: v.detach().to("cpu", dtype=dtype).contiguous() for k, v in tower.trunk.state_dict().items()}
    path = os.fspath(path)
    if layout == "official":
        torch.save({"visual." + timm_to_official_key(k): v for k, v in sd.items()}, path)
    else:
        from safetensors.torch import save_file

        save_file({("visual.trunk." if layout == "open_clip" else "") + k: v for k, v in sd.items()}, path)


def load_eva(path, **kw) -> EvaVisionTower:
    return build_eva_clip(read_file(path), os.path.basename(path), **kw)


def eva_config_from_official(cfg: dict) -> EvaVisionConfig:
    """From an official eva_clip model config (``{"embed_dim": .., "vision_cfg": {..}}``), as the golden sidecars
    carry it; heads and the RoPE grid are not visible in a state dict's shapes."""
    v = cfg["vision_cfg"]
    assert all(v.get(flag) for flag in ("rope", "naiveswiglu", "subln")) and v.get("intp_freq", True), v
    width = int(v["width"])
    return EvaVisionConfig(image_size=int(v["image_size"]), patch_size=int(v["patch_size"]), width=width,
                           depth=int(v["layers"]), num_heads=width // int(v.get("head_width", 64)),
                           mlp_hidden=int(width * float(v["mlp_ratio"])), embed_dim=int(cfg["embed_dim"]),
                           rope_ref_grid=int(v.get("pt_hw_seq_len", 16)))
