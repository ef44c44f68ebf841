"""IDEmbedding: what the Encode node hands to Apply, and what Save/Load ID write and read."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

FORMAT = "pulid-flux-id/1"


@dataclass(frozen=True)
class IDEmbedding:
    """ID tokens of one or more identities, plus the uncond ID for true CFG.

    tokens: (N, T, id_dim) float32 on the CPU. N = 1: one identity, broadcast over the latent batch;
            N = B: one identity per latent batch item. T is 32, or 32 * refs for concatenated references.
    uncond: (1, T_u, id_dim): the IDFormer run on zeros (official negative-branch ID), or None.
    meta:   free-form strings (source images, fusion, model) kept in saved files.
    """

    tokens: Tensor
    uncond: Tensor | None = None
    meta: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        if self.tokens.ndim != 3:
            raise ValueError(f"ID tokens must be (N, tokens, id_dim), got shape {tuple(self.tokens.shape)}")
        if self.uncond is not None and (self.uncond.ndim != 3 or self.uncond.shape[-1] != self.tokens.shape[-1]):
            raise ValueError(
                f"uncond ID shape {tuple(self.uncond.shape)} does not match tokens {tuple(self.tokens.shape)}"
            )

    @property
    def id_dim(self) -> int:
        return self.tokens.shape[-1]

    def save(self, path: str | os.PathLike) -> None:
        from safetensors.torch import save_file

        tensors = {"tokens": self.tokens.detach().float().cpu().contiguous()}
        if self.uncond is not None:
            tensors["uncond"] = self.uncond.detach().float().cpu().contiguous()
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
        return cls(tokens=tensors["tokens"].to(torch.float32), uncond=tensors.get("uncond"),
                   meta=json.loads(metadata.get("meta", "{}")))
