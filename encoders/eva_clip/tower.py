"""EVA02-CLIP vision tower: timm's ``Eva`` trunk plus the five PuLID hidden-state taps."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from ..errors import MissingDependencyError, require
from .config import EVA02_CLIP_L_336, EvaVisionConfig

TIMM_MODEL_NAME = "eva02_large_patch14_clip_336"  # timm/models/eva.py; open_clip EVA02-L-14-336 uses it too
TIMM_MIN_VERSION = "1.0.23"  # first timm whose rotary embeddings have init_non_persistent_buffers()


def _create_trunk(config: EvaVisionConfig) -> nn.Module:
    timm = require("timm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return timm.create_model(TIMM_MODEL_NAME, pretrained=False, **config.timm_kwargs())


class EvaVisionTower(nn.Module):
    """The vision tower. Build with ``EvaVisionTower(config)`` (random init) or ``build_eva_clip(state_dict)``."""

    def __init__(self, config: EvaVisionConfig = EVA02_CLIP_L_336, *, trunk=None):
        super().__init__()
        self.config = config
        self.trunk = trunk if trunk is not None else _create_trunk(config)
        self._force_sdpa()
        self.eval()

    @classmethod
    def empty(cls, config: EvaVisionConfig = EVA02_CLIP_L_336) -> EvaVisionTower:
        """A tower whose parameters live on the meta device (no allocation, no init); RoPE caches are real."""
        with torch.device("meta"):
            trunk = _create_trunk(config)
        tower = cls(config, trunk=trunk)
        # Non-persistent buffers (RoPE bands / sin-cos cache) are not in any checkpoint: compute them on CPU.
        rebuilt = 0
        for mod in tower.modules():
            for name, buf in list(mod.named_buffers(recurse=False)):
                if buf.is_meta:
                    mod.register_buffer(name, torch.empty(buf.shape, dtype=buf.dtype), persistent=False)
                    rebuilt += 1
        inits = [m.init_non_persistent_buffers for m in tower.modules()
                 if callable(getattr(m, "init_non_persistent_buffers", None))]
        for init in inits:
            init()
        if not inits and rebuilt:  # else the RoPE tables stay uninitialised memory
            raise MissingDependencyError(
                f"timm {getattr(require('timm'), '__version__', '?')} is too old for the EVA-CLIP tower: its rotary "
                f"embedding cannot rebuild its buffers; upgrade it in ComfyUI's Python with: "
                f"python -m pip install 'timm>={TIMM_MIN_VERSION}'")
        return tower

    def _force_sdpa(self) -> None:
        """timm picks SDPA via its env / config switch; PuLID always wants F.scaled_dot_product_attention."""
        for blk in self.trunk.blocks:
            if not hasattr(blk.attn, "fused_attn"):
                raise RuntimeError("this timm version's Eva attention has no fused_attn switch")
            blk.attn.fused_attn = True

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        # x: (B, 3, S, S) normalised with the OpenAI CLIP mean/std
        taps: dict[int, torch.Tensor] = {}
        handles = []
        for idx in self.config.tap_blocks:

            def hook(_module, args, kwargs, _idx=idx):
                taps[_idx] = args[0] if args else kwargs["x"]  # (B, 1 + grid², width), entering block _idx

            handles.append(self.trunk.blocks[idx].register_forward_pre_hook(hook, with_kwargs=True))
        try:
            feats = self.trunk.forward_features(x)  # (B, L, width) after the final norm
            pooled = self.trunk.forward_head(feats)  # (B, embed_dim): head(norm(x)[:, 0])
        finally:
            for h in handles:
                h.remove()
        hidden = [taps[i] for i in self.config.tap_blocks]  # 5 x (B, 1 + grid², width)
        return pooled, hidden
