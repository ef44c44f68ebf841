"""EVA02-CLIP vision weights of any supported layout -> the tower."""

from __future__ import annotations

import logging
import re

import torch

from ..errors import EvaCheckpointError
from .config import EvaVisionConfig, infer_config
from .tower import EvaVisionTower

log = logging.getLogger(__name__)

# eva_clip name -> timm name inside a block (timm eva.py checkpoint_filter_fn). A name that does not end
# in "." is a whole-key suffix; one that does is a module path segment.
NAME_PAIRS = (
    (".attn.q_bias", ".attn.q_proj.bias"), (".attn.v_bias", ".attn.v_proj.bias"),
    (".attn.inner_attn_ln.", ".attn.norm."), (".mlp.w1.", ".mlp.fc1_g."), (".mlp.w2.", ".mlp.fc1_x."),
    (".mlp.ffn_ln.", ".mlp.norm."), (".mlp.w3.", ".mlp.fc2."),
)
_RENAMES = tuple((re.compile(re.escape(a) + ("" if a.endswith(".") else "$")), b) for a, b in NAME_PAIRS)
_ROPE = re.compile(r"(^|\.)rope\.freqs_(cos|sin)$")
# Recognisable foreign layouts -> what the file probably is.
_FOREIGN = (
    ("vision_model.encoder.layers.", "a HuggingFace CLIPVisionModel (ComfyUI clip_vision, e.g. CLIP-ViT-L/H)"),
    ("visual.transformer.resblocks.", "an OpenAI / open_clip ViT CLIP (not EVA02)"),
    ("pulid_encoder.", "a PuLID checkpoint (load it with the PuLID loader)"),
    ("double_blocks.", "a Flux diffusion model"),
    ("blocks.0.attn.qkv.weight", "an EVA01 / fused-qkv ViT (PuLID needs EVA02-CLIP with separate q/k/v)"),
)


def official_to_timm_key(key: str) -> str | None:
    """One official eva_clip key (``visual.`` prefix optional) -> timm's name; None = dropped (RoPE)."""
    k = key[len("visual."):] if key.startswith("visual.") else key
    if _ROPE.search(k):
        return None
    for pat, rep in _RENAMES:
        k = pat.sub(rep, k)
    return k


def _describe_foreign(keys) -> str:
    for marker, what in _FOREIGN:
        if any(k.startswith(marker) or k.endswith(marker) for k in keys):
            return what
    return "not an EVA02-CLIP checkpoint"


def to_timm_state_dict(sd: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Vision-tower tensors of any supported layout, under timm's key names (text tower and RoPE dropped)."""
    keys = list(sd)
    if any(k.startswith("visual.trunk.") for k in keys):
        prefix = "visual.trunk."
    elif "visual.patch_embed.proj.weight" in sd:
        prefix = "visual."
    elif "patch_embed.proj.weight" in sd:
        prefix = ""
    else:
        raise EvaCheckpointError(
            f"{source} is {_describe_foreign(keys)}: no EVA02-CLIP vision keys (expected "
            f"'visual.patch_embed.proj.weight' or 'visual.trunk.patch_embed.proj.weight'); found e.g. "
            f"{', '.join(sorted(keys)[:4])}"
        )
    out = {}
    for k, v in sd.items():
        new = official_to_timm_key(k[len(prefix):]) if k.startswith(prefix) else None
        if new is not None:
            out[new] = v
    if "blocks.0.attn.q_proj.weight" not in out or "blocks.0.mlp.fc1_g.weight" not in out:
        raise EvaCheckpointError(f"{source} has a vision tower but {_describe_foreign(out)}: block 0 lacks "
                                 "attn.q_proj / SwiGLU mlp.w1 weights; PuLID-Flux needs EVA02-CLIP-L-14-336")
    return out


def build_eva_clip(sd: dict[str, torch.Tensor], source: str, *, device=None, dtype: torch.dtype = torch.float32,
                   config: EvaVisionConfig | None = None) -> EvaVisionTower:
    """The tower a state dict describes (layout detected, config from the shapes unless given), loaded strictly."""
    sd = to_timm_state_dict(sd, source)
    if config is None:
        try:
            config = infer_config(sd)
        except (KeyError, ValueError) as e:
            raise EvaCheckpointError(f"{source}: cannot infer the EVA tower size ({e})") from e
    tower = EvaVisionTower.empty(config)
    for k in list(sd):  # one tensor at a time: the source copy is freed as soon as it is converted
        sd[k] = sd.pop(k).to(device=device, dtype=dtype, copy=True).contiguous()
    try:
        tower.trunk.load_state_dict(sd, strict=True, assign=True)
    except RuntimeError as e:
        raise EvaCheckpointError(f"{source} does not match the EVA tower its shapes describe: {' '.join(str(e).split())}") from e
    tower.to(device=device, dtype=dtype).requires_grad_(False)
    log.info("PuLID-Flux: EVA-CLIP %s loaded (%s, width %d, %d blocks, %d px)", source, dtype, config.width,
             config.depth, config.image_size)
    return tower
