"""EVA02-CLIP vision tower hyper-parameters (spec §b.1, §b.4).

The tower is timm's ``Eva`` in its ``eva02_large_patch14_clip_336`` form (the same module open_clip 3.3
wraps as ``visual.trunk``); a config of this class overrides its sizes, so tiny test towers run the
same code as the full one.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

# Inputs of blocks 4, 8, 12, 16, 20 = the official `0 < idx <= 20 and idx % 4 == 0` taps
# (eva_vit_model.py:524-527): raw residual stream, cls token included (spec §b.2).
PULID_TAP_BLOCKS = (4, 8, 12, 16, 20)
# EVA02 attention head width (eva_clip EVA02-CLIP-L-14-336.json "head_width": 64): used to infer heads.
EVA02_HEAD_DIM = 64
# EVA02 models were pre-trained at 224 px with patch 14: RoPE reference grid 16 ("pt_hw_seq_len").
EVA02_ROPE_REF_GRID = 16
# Key under which tiny / converted safetensors files may carry the config (JSON of EvaVisionConfig).
METADATA_KEY = "eva_vision_config"


@dataclass(frozen=True)
class EvaVisionConfig:
    image_size: int = 336  # input side in pixels (square)
    patch_size: int = 14
    width: int = 1024  # token width (hidden states are (B, 1 + grid², width))
    depth: int = 24  # number of blocks
    num_heads: int = 16  # width // 64 for EVA02
    mlp_hidden: int = 2730  # SwiGLU hidden = int(1024 * 2.6667)
    embed_dim: int = 768  # head output (pooled) width
    rope_ref_grid: int = 16  # official pt_hw_seq_len: RoPE grid is arange(g)/g*ref (intp_freq)
    tap_blocks: tuple[int, ...] = PULID_TAP_BLOCKS

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ValueError(f"EVA image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.width % self.num_heads:
            raise ValueError(f"EVA width {self.width} is not divisible by num_heads {self.num_heads}")
        if not self.tap_blocks or max(self.tap_blocks) >= self.depth or min(self.tap_blocks) <= 0:
            raise ValueError(
                f"EVA tap_blocks {self.tap_blocks} must lie in 1..{self.depth - 1} (depth {self.depth}); "
                "PuLID needs a 24-block tower"
            )

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        """Tokens per image including the cls token (577 for EVA02-L-336)."""
        return 1 + self.grid**2

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    def timm_kwargs(self) -> dict:
        """Overrides for ``timm.create_model('eva02_large_patch14_clip_336', ...)``."""
        return dict(
            img_size=self.image_size,
            patch_size=self.patch_size,
            embed_dim=self.width,
            depth=self.depth,
            num_heads=self.num_heads,
            # timm computes int(width * mlp_ratio); the +0.5 makes that exactly mlp_hidden.
            mlp_ratio=(self.mlp_hidden + 0.5) / self.width,
            num_classes=self.embed_dim,
            global_pool="token",
            ref_feat_shape=(self.rope_ref_grid, self.rope_ref_grid),
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_eva_clip_model_config(cls, cfg: dict) -> EvaVisionConfig:
        """From an official eva_clip model config (``{"embed_dim": .., "vision_cfg": {..}}``)."""
        v = cfg["vision_cfg"]
        for flag in ("rope", "naiveswiglu", "subln"):
            if not v.get(flag, False):
                raise ValueError(f"eva_clip vision_cfg {flag}={v.get(flag)!r}: only EVA02 towers (rope, SwiGLU, sub-LN) are supported")
        if v.get("intp_freq", True) is False:
            raise ValueError("eva_clip vision_cfg intp_freq=False is not supported (EVA02-CLIP uses True)")
        width = int(v["width"])
        head_width = int(v.get("head_width", EVA02_HEAD_DIM))
        return cls(
            image_size=int(v["image_size"]),
            patch_size=int(v["patch_size"]),
            width=width,
            depth=int(v["layers"]),
            num_heads=width // head_width,
            mlp_hidden=int(width * float(v["mlp_ratio"])),  # the official int(width * mlp_ratio)
            embed_dim=int(cfg["embed_dim"]),
            rope_ref_grid=int(v.get("pt_hw_seq_len", EVA02_ROPE_REF_GRID)),
        )


# The tower PuLID-Flux uses: EVA02-CLIP-L-14-336 (eva_clip/model_configs/EVA02-CLIP-L-14-336.json).
EVA02_CLIP_L_336 = EvaVisionConfig()


def infer_config(sd: dict, metadata: dict | None = None) -> EvaVisionConfig:
    """Infer the config from a state dict in timm key layout (shapes), refined by metadata.

    Heads and the RoPE reference grid are not visible in shapes: they come from ``metadata[METADATA_KEY]``
    when present, else EVA02's head width 64 and reference grid 16.
    """
    meta = {}
    if metadata and metadata.get(METADATA_KEY):
        meta = json.loads(metadata[METADATA_KEY])
    pw = sd["patch_embed.proj.weight"]  # (width, 3, patch, patch)
    width, patch = int(pw.shape[0]), int(pw.shape[-1])
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    n_pos = int(sd["pos_embed"].shape[1]) - 1  # pos_embed (1, 1 + grid², width)
    grid = math.isqrt(n_pos)
    if grid * grid != n_pos:
        raise ValueError(f"EVA pos_embed has {n_pos} patch positions, not a square grid")
    cfg = dict(
        image_size=grid * patch,
        patch_size=patch,
        width=width,
        depth=depth,
        num_heads=int(meta.get("num_heads", max(1, width // EVA02_HEAD_DIM))),
        mlp_hidden=int(sd["blocks.0.mlp.fc1_g.weight"].shape[0]),
        embed_dim=int(sd["head.weight"].shape[0]),
        rope_ref_grid=int(meta.get("rope_ref_grid", EVA02_ROPE_REF_GRID)),
    )
    if "tap_blocks" in meta:
        cfg["tap_blocks"] = tuple(meta["tap_blocks"])
    return EvaVisionConfig(**cfg)
