"""The numbers of the PuLID-Flux architecture, each named once."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class PulidFluxConfig:
    # Flux.1 geometry (flux/util.py, flux-dev FluxParams)
    flux_double_blocks: int = 19
    flux_single_blocks: int = 38
    flux_hidden: int = 3072  # the CA query width
    # a CA after double blocks 0, 2, 4, ... and single blocks 0, 4, 8, ...
    double_interval: int = 2
    single_interval: int = 4
    # PerceiverAttentionCA
    ca_dim_head: int = 128
    ca_heads: int = 16
    # IDFormer
    id_dim: int = 2048  # width of an ID token = CA key/value input
    num_id_queries: int = 32  # ID tokens handed to Flux
    encoder_dim: int = 1024
    encoder_depth: int = 10  # (PerceiverAttention, FeedForward) pairs, 2 per ViT tap
    encoder_dim_head: int = 64
    encoder_heads: int = 16
    num_id_token: int = 5  # id_cond becomes 5 tokens of width encoder_dim
    ff_mult: int = 4
    mapping_hidden: int = 1024  # hidden width of mapping_i / id_embedding_mapping
    # what the two identity encoders deliver
    arcface_dim: int = 512  # antelopev2 glintr100 raw embedding
    clip_embed_dim: int = 768  # EVA02-CLIP-L-14-336 pooled projection
    vit_width: int = 1024  # EVA02-L residual width = width of each hidden tap
    num_vit_taps: int = 5  # EVA hidden states the IDFormer reads

    @property
    def id_in_dim(self) -> int:
        """Width of id_cond: raw ArcFace ‖ L2-normalised EVA pooled (1280)."""
        return self.arcface_dim + self.clip_embed_dim

    @property
    def layout(self) -> CALayout:
        return ca_layout(self.flux_double_blocks, self.flux_single_blocks, self.double_interval, self.single_interval)

    @property
    def num_ca(self) -> int:
        return self.layout.num_ca


@dataclass(frozen=True)
class CALayout:
    """Which Flux block gets which CA, in the official order (docs/design.md, "CA placement")."""

    double: dict[int, int]  # double block index -> CA index
    single: dict[int, int]  # single block index -> CA index

    @property
    def num_ca(self) -> int:
        return len(self.double) + len(self.single)


def ca_layout(double_depth: int, single_depth: int, double_interval: int = PulidFluxConfig.double_interval,
              single_interval: int = PulidFluxConfig.single_interval) -> CALayout:
    if min(double_depth, single_depth) < 0 or min(double_interval, single_interval) < 1:
        raise ValueError(f"invalid Flux geometry: depths ({double_depth}, {single_depth}) must be >= 0 and "
                         f"intervals ({double_interval}, {single_interval}) >= 1")
    n_double = math.ceil(double_depth / double_interval)
    double = {k * double_interval: k for k in range(n_double)}
    single = {k * single_interval: n_double + k for k in range(math.ceil(single_depth / single_interval))}
    return CALayout(double=double, single=single)


FLUX_DEV = PulidFluxConfig()
