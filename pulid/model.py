"""The PuLID-Flux model of one checkpoint."""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from .attention import PerceiverAttentionCA
from .config import FLUX_DEV, PulidFluxConfig
from .encoder import IDFormer

ENCODER_PREFIX = "pulid_encoder."
CA_PREFIX = "pulid_ca."


class PulidCheckpointError(ValueError):
    """A state dict that is not a usable PuLID-Flux checkpoint; the message says why."""


class PulidFluxModel(nn.Module):
    def __init__(self, encoder_args: Mapping, ca_args: Mapping, num_ca: int, operations=None, device=None, dtype=None):
        super().__init__()
        self.encoder_args, self.ca_args = dict(encoder_args), dict(ca_args)
        self.pulid_encoder = IDFormer(**self.encoder_args, operations=operations, device=device, dtype=dtype)
        self.pulid_ca = nn.ModuleList(
            PerceiverAttentionCA(**self.ca_args, operations=operations, device=device, dtype=dtype)
            for _ in range(num_ca)
        )

    @property
    def num_ca(self) -> int:
        return len(self.pulid_ca)

    @property
    def id_dim(self) -> int:
        """Width of an ID token: IDFormer output = CA key/value input."""
        return self.ca_args["kv_dim"]

    @property
    def hidden_size(self) -> int:
        """The Flux hidden size the CA modules attend from."""
        return self.ca_args["dim"]

    @classmethod
    def from_config(cls, config: PulidFluxConfig = FLUX_DEV, operations=None, device=None, dtype=None):
        """The architecture of `config` (device='meta' builds the full one for free)."""
        enc = dict(dim=config.encoder_dim, depth=config.encoder_depth, dim_head=config.encoder_dim_head,
                   heads=config.encoder_heads, num_id_token=config.num_id_token, num_queries=config.num_id_queries,
                   output_dim=config.id_dim, ff_mult=config.ff_mult, id_in_dim=config.id_in_dim,
                   vit_dim=config.vit_width, mapping_hidden=config.mapping_hidden, num_vit_taps=config.num_vit_taps)
        ca = dict(dim=config.flux_hidden, dim_head=config.ca_dim_head, heads=config.ca_heads, kv_dim=config.id_dim)
        return cls(enc, ca, config.num_ca, operations=operations, device=device, dtype=dtype)

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, Tensor], source: str, *, dtype=None, device=None,
                        operations=None) -> PulidFluxModel:
        """Build the model a checkpoint describes and load it strictly; floating tensors go to `dtype`."""
        low = sorted({str(t.dtype) for t in sd.values() if t.is_floating_point() and t.element_size() == 1})
        if low:
            raise PulidCheckpointError(
                f"{source} stores its weights in {', '.join(low)}: 8-bit rounding changes the ID (by 7-10 %), "
                f"so this file is refused; use the bf16 release instead"
            )
        enc_args, ca_args, num_ca = infer_architecture(sd, source)
        with torch.device("meta"):
            model = cls(enc_args, ca_args, num_ca, operations=operations)
        weights = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else None) for k, v in sd.items()}
        try:
            model.load_state_dict(weights, strict=True, assign=True)
        except RuntimeError as e:
            raise PulidCheckpointError(f"{source} does not match the PuLID-Flux architecture its shapes describe "
                                       f"(damaged, or another model): {' '.join(str(e).split())}") from e
        return model.eval().requires_grad_(False)


def _indices(keys, pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := rx.match(k))})


def infer_architecture(sd: Mapping[str, Tensor], source: str) -> tuple[dict, dict, int]:
    """Constructor arguments (IDFormer, CA) and the CA count from a state dict's shapes."""
    keys = list(sd)
    ours = [k for k in keys if k.startswith((ENCODER_PREFIX, CA_PREFIX))]
    if not ours:
        sample = ", ".join(repr(k) for k in keys[:3]) or "no keys at all"
        raise PulidCheckpointError(f"{source} is not a PuLID-Flux checkpoint: no 'pulid_encoder.*' / 'pulid_ca.*' "
                                   f"keys (found {sample})")
    if len(ours) != len(keys):
        raise PulidCheckpointError(f"{source}: unexpected keys outside pulid_encoder/pulid_ca: "
                                   f"{[k for k in keys if k not in ours][:5]}")

    def shape(key: str) -> torch.Size:
        if key not in sd:
            raise PulidCheckpointError(f"{source}: missing key {key!r}, which every PuLID-Flux checkpoint has")
        return sd[key].shape

    e = ENCODER_PREFIX
    _, num_queries, dim = shape(e + "latents")
    mapping_hidden, vit_dim = shape(e + "mapping_0.0.weight")
    enc = dict(
        dim=dim, depth=len(_indices(keys, re.escape(e) + r"layers\.(\d+)\.")), dim_head=FLUX_DEV.encoder_dim_head,
        heads=_heads(shape(e + "layers.0.0.to_q.weight")[0], FLUX_DEV.encoder_dim_head, source),
        num_id_token=shape(e + "id_embedding_mapping.6.weight")[0] // dim, num_queries=num_queries,
        output_dim=shape(e + "proj_out")[1], ff_mult=shape(e + "layers.0.1.1.weight")[0] // dim,
        id_in_dim=shape(e + "id_embedding_mapping.0.weight")[1], vit_dim=vit_dim, mapping_hidden=mapping_hidden,
        num_vit_taps=len(_indices(keys, re.escape(e) + r"mapping_(\d+)\.")),
    )
    num_ca = len(_indices(keys, re.escape(CA_PREFIX) + r"(\d+)\."))
    if num_ca == 0:
        raise PulidCheckpointError(f"{source}: no 'pulid_ca.N.*' cross-attention weights; the file is incomplete")
    ca_inner, ca_dim = shape(CA_PREFIX + "0.to_q.weight")
    ca = dict(dim=ca_dim, dim_head=FLUX_DEV.ca_dim_head, heads=_heads(ca_inner, FLUX_DEV.ca_dim_head, source),
              kv_dim=shape(CA_PREFIX + "0.to_kv.weight")[1])
    return enc, ca, num_ca


def _heads(inner: int, dim_head: int, source: str) -> int:
    if inner % dim_head:
        raise PulidCheckpointError(f"{source}: attention width {inner} is not a multiple of the PuLID head width "
                                   f"{dim_head}; this is not a PuLID-Flux checkpoint")
    return inner // dim_head
