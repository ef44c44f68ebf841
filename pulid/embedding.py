"""IDEmbedding: what the Encode node hands to Apply, and what Save/Load ID write and read."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

FORMAT = "pulid-flux-id/1"


def check_finite(name: str, t: Tensor | None, dtype: torch.dtype | None = None) -> None:
    """Refuse NaN / inf in `t`, or values that overflow `dtype`, the dtype `t` is used in."""
    if t is None or not t.is_floating_point() or bool(torch.isfinite(t if dtype is None else t.to(dtype)).all()):
        return
    bad = int((~torch.isfinite(t)).sum())
    what = (f"hold {bad} NaN or infinite value(s) of {t.numel()}" if bad else
            f"reach {float(t.abs().max()):.3g}, which overflows {dtype}")
    raise ValueError(f"the identity's {name} {what}: the ID is corrupt and would give a black image; encode the "
                     f"reference images again (and save the new ID)")


@dataclass(frozen=True)
class IDEmbedding:
    """ID tokens of one or more identities, plus the uncond ID for true CFG and the reference ArcFace embeddings.

    tokens:  (N, T, id_dim) float32 on the CPU. N = 1: one identity, broadcast over the latent batch;
             N = B: one identity per latent batch item. T is 32, or 32 * refs for concatenated references.
    uncond:  (1, T_u, id_dim): the IDFormer run on zeros (official negative-branch ID), or None.
    arcface: (N_ref, 512) float32: the raw ArcFace embedding of every reference image (what the face
             similarity node compares generated faces with), or None (IDs saved by older versions).
    meta:    free-form strings (source images, fusion, model) kept in saved files.
    Every tensor must be finite: a NaN / inf identity is refused here, before it reaches sampling.
    """

    tokens: Tensor
    uncond: Tensor | None = None
    meta: dict[str, str] = field(default_factory=dict)
    arcface: Tensor | None = None

    def __post_init__(self):
        if self.tokens.ndim != 3:
            raise ValueError(f"ID tokens must be (N, tokens, id_dim), got shape {tuple(self.tokens.shape)}")
        if self.uncond is not None and (self.uncond.ndim != 3 or self.uncond.shape[-1] != self.tokens.shape[-1]):
            raise ValueError(
                f"uncond ID shape {tuple(self.uncond.shape)} does not match tokens {tuple(self.tokens.shape)}"
            )
        if self.arcface is not None and (self.arcface.ndim != 2 or self.arcface.shape[0] < 1):
            raise ValueError(f"reference ArcFace embeddings must be (N_ref, dim), got shape {tuple(self.arcface.shape)}")
        check_finite("ID tokens", self.tokens)
        check_finite("uncond ID tokens", self.uncond)
        check_finite("reference ArcFace embeddings", self.arcface)

    @property
    def id_dim(self) -> int:
        return self.tokens.shape[-1]

    def save(self, path: str | os.PathLike) -> None:
        from safetensors.torch import save_file

        tensors = {"tokens": self.tokens.detach().float().cpu().contiguous()}
        if self.uncond is not None:
            tensors["uncond"] = self.uncond.detach().float().cpu().contiguous()
        if self.arcface is not None:
            tensors["arcface"] = self.arcface.detach().float().cpu().contiguous()
        save_file(tensors, str(path), metadata={"format": FORMAT, "meta": json.dumps(self.meta)})

    @classmethod
    def load(cls, path: str | os.PathLike) -> IDEmbedding:
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                metadata = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError) as e:
            raise ValueError(f"{path.name} is not a readable saved ID ({e}); save the identity again") from e
        if metadata.get("format") != FORMAT or "tokens" not in tensors:
            raise ValueError(
                f"{path.name} is not a PuLID-Flux ID file (format {metadata.get('format')!r}, "
                f"keys {sorted(tensors)}); create one with the Save ID node"
            )
        arcface = tensors.get("arcface")
        try:
            return cls(tokens=tensors["tokens"].to(torch.float32), uncond=tensors.get("uncond"),
                       meta=json.loads(metadata.get("meta", "{}")),
                       arcface=None if arcface is None else arcface.to(torch.float32))
        except ValueError as e:
            raise ValueError(f"saved ID {path.name} is refused: {e}") from e
