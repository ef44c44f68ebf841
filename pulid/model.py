"""PulidFluxModel: the IDFormer and the Flux ID cross-attention modules of one checkpoint.

The official checkpoint (`pulid_flux_v0.9.x.safetensors`, spec §d) holds exactly two prefixes,
`pulid_encoder.` (IDFormer) and `pulid_ca.` (20 PerceiverAttentionCA). `from_state_dict` reads every
size the shapes tell, builds the model on the meta device, checks keys and shapes strictly, and only
then takes the tensors over (no second copy of the weights).
"""

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
# Hyper-parameters a state dict cannot tell (only heads * dim_head is visible); overridable through
# the checkpoint's safetensors metadata (see checkpoint.CONFIG_METADATA_KEY).
UNSHAPED_KEYS = ("encoder_dim_head", "ca_dim_head")


class PulidFlux:
    """What the PULID socket carries: one loaded PuLID-Flux file and how ComfyUI loads its parts.

    model: the PulidFluxModel (weights on the offload device). wrap(module): a ComfyUI ModelPatcher for a
    module (built by the loader with its load/offload devices, so this package never imports ComfyUI).
    name: the file name, for messages. encoder_patcher: the IDFormer's patcher (what Encode loads).
    """

    def __init__(self, model: PulidFluxModel, wrap, name: str = "PuLID-Flux model"):
        self.model, self.wrap, self.name = model, wrap, name
        self.encoder_patcher = wrap(model.pulid_encoder)


class PulidCheckpointError(ValueError):
    """A file or state dict that is not a usable PuLID-Flux checkpoint; the message says why and what to do."""


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
        """The official architecture (defaults: 571 M parameters; use device='meta' to inspect it for free)."""
        enc = dict(dim=config.encoder_dim, depth=config.encoder_depth, dim_head=config.encoder_dim_head,
                   heads=config.encoder_heads, num_id_token=config.num_id_token, num_queries=config.num_id_queries,
                   output_dim=config.id_dim, ff_mult=config.ff_mult, id_in_dim=config.id_in_dim,
                   vit_dim=config.vit_width, mapping_hidden=config.mapping_hidden, num_vit_taps=config.num_vit_taps)
        ca = dict(dim=config.flux_hidden, dim_head=config.ca_dim_head, heads=config.ca_heads, kv_dim=config.id_dim)
        return cls(enc, ca, config.num_ca, operations=operations, device=device, dtype=dtype)

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, Tensor], *, source: str = "state dict", dtype=None, device=None,
                        operations=None, config_overrides: Mapping | None = None) -> PulidFluxModel:
        """Build the model a checkpoint describes and load it strictly.

        dtype/device: convert floating tensors (default: keep the file's dtype, CPU).
        config_overrides: values for `UNSHAPED_KEYS` (default: the official 64 / 128).
        """
        enc_args, ca_args, num_ca = infer_architecture(sd, source, config_overrides or {})
        with torch.device("meta"):
            model = cls(enc_args, ca_args, num_ca, operations=operations)
        check_state_dict(model, sd, source)
        model.load_state_dict({k: _convert(v, dtype, device) for k, v in sd.items()}, strict=True, assign=True)
        return model.eval().requires_grad_(False)

    def spec(self) -> dict:
        """What `from_state_dict` cannot infer, for writing into a checkpoint's metadata."""
        return {"encoder_dim_head": self.encoder_args["dim_head"], "ca_dim_head": self.ca_args["dim_head"]}


def _convert(t: Tensor, dtype, device) -> Tensor:
    if dtype is not None and t.is_floating_point():
        t = t.to(dtype)
    return t.to(device) if device is not None else t


def _indices(keys, pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := rx.match(k))})


def _shape(sd: Mapping[str, Tensor], key: str, source: str) -> torch.Size:
    if key not in sd:
        raise PulidCheckpointError(
            f"{source}: missing key {key!r}, which every PuLID-Flux checkpoint has. Is this the "
            f"pulid_flux_v0.9.x.safetensors file (https://huggingface.co/guozinan/PuLID)?"
        )
    return sd[key].shape


def infer_architecture(sd: Mapping[str, Tensor], source: str, overrides: Mapping) -> tuple[dict, dict, int]:
    keys = list(sd)
    ours = [k for k in keys if k.startswith((ENCODER_PREFIX, CA_PREFIX))]
    if not ours:
        sample = ", ".join(repr(k) for k in keys[:3]) or "no keys at all"
        raise PulidCheckpointError(
            f"{source} is not a PuLID-Flux checkpoint: no 'pulid_encoder.*' / 'pulid_ca.*' keys (found {sample}). "
            f"Select pulid_flux_v0.9.1.safetensors (or v0.9.0) from https://huggingface.co/guozinan/PuLID."
        )
    bad = [k for k in keys if k not in ours]
    if bad:
        raise PulidCheckpointError(f"{source}: unexpected keys outside pulid_encoder/pulid_ca: {bad[:5]}")
    for key in overrides:
        if key not in UNSHAPED_KEYS:
            raise PulidCheckpointError(f"{source}: unknown config override {key!r}; known: {UNSHAPED_KEYS}")
    e = ENCODER_PREFIX
    _, num_queries, dim = _shape(sd, e + "latents", source)
    depth = len(_indices(keys, re.escape(e) + r"layers\.(\d+)\."))
    num_taps = len(_indices(keys, re.escape(e) + r"mapping_(\d+)\."))
    mapping_hidden, vit_dim = _shape(sd, e + "mapping_0.0.weight", source)
    _, id_in_dim = _shape(sd, e + "id_embedding_mapping.0.weight", source)
    enc_dim_head = int(overrides.get("encoder_dim_head", FLUX_DEV.encoder_dim_head))
    enc_inner = _shape(sd, e + "layers.0.0.to_q.weight", source)[0]
    enc = dict(
        dim=dim, depth=depth, dim_head=enc_dim_head, heads=_heads(enc_inner, enc_dim_head, "encoder", source),
        num_id_token=_shape(sd, e + "id_embedding_mapping.6.weight", source)[0] // dim, num_queries=num_queries,
        output_dim=_shape(sd, e + "proj_out", source)[1], ff_mult=_shape(sd, e + "layers.0.1.1.weight", source)[0] // dim,
        id_in_dim=id_in_dim, vit_dim=vit_dim, mapping_hidden=mapping_hidden, num_vit_taps=num_taps,
    )
    num_ca = len(_indices(keys, re.escape(CA_PREFIX) + r"(\d+)\."))
    if num_ca == 0:
        raise PulidCheckpointError(f"{source}: no 'pulid_ca.N.*' cross-attention weights; the file is incomplete")
    ca_inner, ca_dim = _shape(sd, CA_PREFIX + "0.to_q.weight", source)
    ca_dim_head = int(overrides.get("ca_dim_head", FLUX_DEV.ca_dim_head))
    ca = dict(dim=ca_dim, dim_head=ca_dim_head, heads=_heads(ca_inner, ca_dim_head, "ca", source),
              kv_dim=_shape(sd, CA_PREFIX + "0.to_kv.weight", source)[1])
    return enc, ca, num_ca


def _heads(inner: int, dim_head: int, what: str, source: str) -> int:
    if inner % dim_head:
        raise PulidCheckpointError(
            f"{source}: {what} attention width {inner} is not a multiple of dim_head {dim_head}; "
            f"give '{what}_dim_head' in the checkpoint metadata"
        )
    return inner // dim_head


def check_state_dict(model: nn.Module, sd: Mapping[str, Tensor], source: str) -> None:
    """Strict key and shape check, with the first offenders named."""
    expected = {k: v.shape for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    mis_shaped = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(s)}"
                  for k, s in expected.items() if k in sd and sd[k].shape != s]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (first: {missing[:5]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (first: {unexpected[:5]})")
    if mis_shaped:
        problems.append(f"{len(mis_shaped)} mis-shaped (first: {mis_shaped[:5]})")
    if problems:
        raise PulidCheckpointError(
            f"{source} does not match the PuLID-Flux architecture its shapes describe: " + "; ".join(problems)
            + ". The file is damaged or from another model: download pulid_flux_v0.9.1.safetensors again."
        )
