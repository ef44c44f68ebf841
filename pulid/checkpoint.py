"""Reading and writing PuLID-Flux checkpoint files, with errors a user can act on.

Safetensors is the format of the official release. Pickled files (.pt/.pth/.bin/.ckpt) are read only
with `torch.load(weights_only=True)`, which refuses to run code hidden in the pickle.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from .model import PulidCheckpointError, PulidFluxModel

CONFIG_METADATA_KEY = "pulid_flux_config"  # safetensors metadata: JSON of model.UNSHAPED_KEYS values
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
SAFETENSORS_MAGIC_MIN = 8  # a safetensors file starts with an 8-byte little-endian header length


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Return (state dict, safetensors metadata) of a checkpoint file, or raise PulidCheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise PulidCheckpointError(f"checkpoint file {str(path)!r} does not exist")
    size = path.stat().st_size
    if size == 0:
        raise PulidCheckpointError(
            f"{path.name} is empty (0 bytes): the download was interrupted. Download it again into {path.parent}."
        )
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return _read_pickle(path), {}
    return _read_safetensors(path, size)


def _read_safetensors(path: Path, size: int) -> tuple[dict[str, Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    with open(path, "rb") as f:
        head = f.read(SAFETENSORS_MAGIC_MIN)
    header_len = int.from_bytes(head, "little") if len(head) == SAFETENSORS_MAGIC_MIN else -1
    if header_len <= 0 or header_len > size - SAFETENSORS_MAGIC_MIN:
        if head[:2] == b"PK" or head[:1] == b"\x80":
            raise PulidCheckpointError(
                f"{path.name} is a pickled PyTorch file, not safetensors: rename it to .pt to load it safely "
                f"(weights only), or convert it to .safetensors"
            )
        raise PulidCheckpointError(
            f"{path.name} ({size} bytes) is not a safetensors file, or is truncated: its header is unreadable. "
            f"Download it again into {path.parent}."
        )
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise PulidCheckpointError(
            f"{path.name} ({size} bytes) could not be read as safetensors ({e}); the file is truncated or "
            f"damaged. Download it again into {path.parent}."
        ) from e
    return sd, metadata


def _read_pickle(path: Path) -> dict[str, Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise PulidCheckpointError(
            f"{path.name} holds Python objects besides tensors, which are not loaded for safety "
            f"(weights_only=True: {str(e).splitlines()[0]}). Use the .safetensors release instead."
        ) from e
    except (RuntimeError, EOFError, ValueError, OSError) as e:
        raise PulidCheckpointError(
            f"{path.name} could not be read as a PyTorch checkpoint ({e}); the file is truncated or not a "
            f"checkpoint. Download it again into {path.parent}."
        ) from e
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise PulidCheckpointError(f"{path.name} does not hold a state dict (found {type(obj).__name__})")
    return dict(obj)


def load_pulid_file(path: str | os.PathLike, dtype=None, device=None, operations=None) -> PulidFluxModel:
    """Load a PuLID-Flux checkpoint file into a `PulidFluxModel` (strict; see `from_state_dict`)."""
    sd, metadata = read_state_dict(path)
    overrides = {}
    if CONFIG_METADATA_KEY in metadata:
        try:
            overrides = json.loads(metadata[CONFIG_METADATA_KEY])
        except json.JSONDecodeError as e:
            raise PulidCheckpointError(f"{Path(path).name}: metadata {CONFIG_METADATA_KEY!r} is not JSON ({e})") from e
    return PulidFluxModel.from_state_dict(sd, source=Path(path).name, dtype=dtype, device=device,
                                          operations=operations, config_overrides=overrides)


def save_pulid_file(model: PulidFluxModel, path: str | os.PathLike, dtype=None) -> None:
    """Write a model in the official layout; what shapes cannot tell goes into the metadata."""
    from safetensors.torch import save_file

    sd = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
          for k, v in model.state_dict().items()}
    save_file(sd, str(path), metadata={CONFIG_METADATA_KEY: json.dumps(model.spec())})
