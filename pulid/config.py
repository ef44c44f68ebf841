"""Every constant of PuLID-Flux, named once, with where it comes from.

Sources are the official code (ToTheBeginning/PuLID @ 1aa2fc7); `docs/spec.md` cites the lines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class PulidFluxConfig:
    # --- Flux.1 geometry (flux/util.py flux-dev FluxParams) -----------------------------------
    flux_double_blocks: int = 19  # depth: DoubleStreamBlocks
    flux_single_blocks: int = 38  # depth_single_blocks: SingleStreamBlocks
    flux_hidden: int = 3072  # hidden_size; the CA query width (PerceiverAttentionCA dim)

    # --- where the ID cross-attention goes (pipeline_flux.py:26-27) ----------------------------
    double_interval: int = 2  # a CA after double blocks 0, 2, 4, ...
    single_interval: int = 4  # a CA after single blocks 0, 4, 8, ...

    # --- PerceiverAttentionCA defaults (pipeline_flux.py:38; encoders_transformer.py:29-42) ---
    ca_dim_head: int = 128
    ca_heads: int = 16  # 16 * 128 = 2048 inner width

    # --- IDFormer defaults (encoders_transformer.py:130-140) -----------------------------------
    id_dim: int = 2048  # output_dim: width of an ID token = CA kv_dim
    num_id_queries: int = 32  # num_queries: ID tokens handed to Flux
    encoder_dim: int = 1024  # dim: perceiver latent width
    encoder_depth: int = 10  # depth: (PerceiverAttention, FeedForward) pairs, 2 per ViT tap
    encoder_dim_head: int = 64
    encoder_heads: int = 16
    num_id_token: int = 5  # id_cond becomes 5 tokens of width `encoder_dim`
    ff_mult: int = 4
    mapping_hidden: int = 1024  # hard-coded width of mapping_i / id_embedding_mapping (164-187)

    # --- the two identity encoders (pipeline_flux.py:178-183) ----------------------------------
    arcface_dim: int = 512  # antelopev2 glintr100 raw embedding
    clip_embed_dim: int = 768  # EVA02-CLIP-L-14-336 pooled projection
    vit_width: int = 1024  # EVA02-L residual width, the width of each hidden tap
    # Residual stream entering these EVA blocks (= output of blocks 3, 7, 11, 15, 19), cls included.
    vit_hidden_layers: tuple[int, ...] = field(default=(4, 8, 12, 16, 20))

    @property
    def id_in_dim(self) -> int:
        """Width of id_cond: raw ArcFace ‖ L2-normalised EVA pooled (1280)."""
        return self.arcface_dim + self.clip_embed_dim

    @property
    def num_vit_taps(self) -> int:
        return len(self.vit_hidden_layers)

    @property
    def layout(self) -> CALayout:
        return ca_layout(self.flux_double_blocks, self.flux_single_blocks, self.double_interval, self.single_interval)

    @property
    def num_ca(self) -> int:
        return self.layout.num_ca


@dataclass(frozen=True)
class CALayout:
    """Which Flux block gets which CA module, in the official order.

    The official forward keeps one running `ca_idx`: double blocks 0, 2, 4, ... take CA 0, 1, 2, ...
    and the single blocks 0, 4, 8, ... continue the count (flux/model.py:116-147). The official
    count `D//2 + S//4 (+1 if D%2) (+1 if S%4)` is exactly ceil(D/2) + ceil(S/4): the "+1" rule means
    block 0 always gets a CA and the last partial interval still gets one.
    """

    double: dict[int, int]  # double block index -> CA index
    single: dict[int, int]  # single block index -> CA index

    @property
    def num_ca(self) -> int:
        return len(self.double) + len(self.single)


def ca_layout(double_depth: int, single_depth: int, double_interval: int = 2, single_interval: int = 4) -> CALayout:
    if min(double_depth, single_depth) < 0 or min(double_interval, single_interval) < 1:
        raise ValueError(
            f"invalid Flux geometry: depths ({double_depth}, {single_depth}) must be >= 0 and "
            f"intervals ({double_interval}, {single_interval}) >= 1"
        )
    n_double = math.ceil(double_depth / double_interval)
    n_single = math.ceil(single_depth / single_interval)
    double = {k * double_interval: k for k in range(n_double)}
    single = {k * single_interval: n_double + k for k in range(n_single)}
    return CALayout(double=double, single=single)


FLUX_DEV = PulidFluxConfig()
