"""EVA02-CLIP vision tower sizes."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import EvaCheckpointError

# The IDFormer reads the residual stream entering blocks 4, 8, 12, 16, 20 (cls token included): the
# official eva_vit_model.py EVAVisionTransformer.forward_features keeps `0 < idx <= 20 and idx % 4 == 0`.
PULID_TAP_BLOCKS = (4, 8, 12, 16, 20)
EVA02_HEAD_DIM = 64  # EVA02-CLIP-L-14-336.json "head_width": heads are inferred from it
EVA02_ROPE_REF_GRID = 16  # EVA02 was pre-trained at 224 px, patch 14: RoPE reference grid ("pt_hw_seq_len")


@dataclass(frozen=True)
class EvaVisionConfig:
    image_size: int = 336  # input side in pixels (square)
    patch_size: int = 14
    width: int = 1024  # token width (hidden states are (B, 1 + grid², width))
    depth: int = 24  # number of blocks
    num_heads: int = 16
    mlp_hidden: int = 2730  # SwiGLU hidden = int(1024 * 2.6667)
    embed_dim: int = 768  # head output (pooled) width
    rope_ref_grid: int = EVA02_ROPE_REF_GRID
    tap_blocks: tuple[int, ...] = PULID_TAP_BLOCKS

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ValueError(f"EVA image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.width % self.num_heads:
            raise ValueError(f"EVA width {self.width} is not divisible by num_heads {self.num_heads}")
        if not self.tap_blocks or max(self.tap_blocks) >= self.depth or min(self.tap_blocks) <= 0:
            raise ValueError(f"EVA tap_blocks {self.tap_blocks} must lie in 1..{self.depth - 1} (depth {self.depth}); "
                             "PuLID needs a 24-block tower")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        """Tokens per image including the cls token (577 for EVA02-L-336)."""
        return 1 + self.grid**2

    def timm_kwargs(self) -> dict:
        """Overrides for ``timm.create_model('eva02_large_patch14_clip_336', ...)``."""
        return dict(
            img_size=self.image_size, patch_size=self.patch_size, embed_dim=self.width, depth=self.depth,
            num_heads=self.num_heads,
            mlp_ratio=(self.mlp_hidden + 0.5) / self.width,  # timm computes int(width * mlp_ratio)
            num_classes=self.embed_dim, global_pool="token", ref_feat_shape=(self.rope_ref_grid, self.rope_ref_grid),
        )


# The tower PuLID-Flux v0.9.x uses: EVA02-CLIP-L-14-336 (eva_clip model_configs/EVA02-CLIP-L-14-336.json).
EVA02_CLIP_L_336 = EvaVisionConfig()


def check_pulid_tower(config: EvaVisionConfig, source: str, id_encoder: tuple[int, int, int] | None = None,
                      expected: EvaVisionConfig = EVA02_CLIP_L_336) -> None:
    """Refuse a tower of another input size, patch or depth than EVA02-CLIP-L-14-336 (e.g. the 224 px EVA02-L runs
    without a shape error) or, given an ID encoder's (ViT width, EVA embed width, taps), of other widths."""
    got = (config.image_size, config.patch_size, config.depth)
    want = (expected.image_size, expected.patch_size, expected.depth)
    if got != want:
        raise EvaCheckpointError(
            f"{source} is an EVA-CLIP tower of {got[0]} px, patch {got[1]}, {got[2]} layers (width {config.width}), "
            f"but PuLID-Flux v0.9.x needs EVA02-CLIP-L-14-336: {want[0]} px, patch {want[1]}, {want[2]} layers "
            f"(width {expected.width})"
        )
    widths = (config.width, config.embed_dim, len(config.tap_blocks))
    if id_encoder is not None and widths != tuple(id_encoder):
        raise EvaCheckpointError(
            f"{source}: the EVA-CLIP tower's (width, embed width, taps) {widths} do not fit the PuLID model's ID "
            f"encoder {tuple(id_encoder)}: load the EVA02-CLIP-L-14-336 file with the PuLID-Flux v0.9.x file"
        )


def infer_config(sd: dict) -> EvaVisionConfig:
    """The config of a state dict in timm key layout, from its shapes (EVA02 head width and RoPE grid)."""
    pw = sd["patch_embed.proj.weight"]  # (width, 3, patch, patch)
    width, patch = int(pw.shape[0]), int(pw.shape[-1])
    n_pos = int(sd["pos_embed"].shape[1]) - 1  # pos_embed (1, 1 + grid², width)
    grid = math.isqrt(n_pos)
    if grid * grid != n_pos:
        raise ValueError(f"EVA pos_embed has {n_pos} patch positions, not a square grid")
    return EvaVisionConfig(
        image_size=grid * patch, patch_size=patch, width=width,
        depth=len({k.split(".")[1] for k in sd if k.startswith("blocks.")}),
        num_heads=max(1, width // EVA02_HEAD_DIM), mlp_hidden=int(sd["blocks.0.mlp.fc1_g.weight"].shape[0]),
        embed_dim=int(sd["head.weight"].shape[0]),
    )
