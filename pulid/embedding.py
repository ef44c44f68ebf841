"""IDEmbedding: what the Encode node hands to Apply, and what Save/Load ID write and read."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

FORMAT = "pulid-flux-id/1"
CARD_KEY = "pulid_flux_id"  # the ID card's PNG text chunk: the identity's safetensors bytes, base64
CARD_MAX_CHARS = 16 << 20  # a card holds a few MB at most; larger chunks are refused before decoding


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
    faces:   (N_ref, h, w, 3) uint8 thumbnails of the aligned reference faces (drawn on the ID card), or None.
    Every tensor must be finite: a NaN / inf identity is refused here, before it reaches sampling.
    """

    tokens: Tensor
    uncond: Tensor | None = None
    meta: dict[str, str] = field(default_factory=dict)
    arcface: Tensor | None = None
    faces: Tensor | None = None

    def __post_init__(self):
        if self.tokens.ndim != 3:
            raise ValueError(f"ID tokens must be (N, tokens, id_dim), got shape {tuple(self.tokens.shape)}")
        if self.uncond is not None and (self.uncond.ndim != 3 or self.uncond.shape[-1] != self.tokens.shape[-1]):
            raise ValueError(
                f"uncond ID shape {tuple(self.uncond.shape)} does not match tokens {tuple(self.tokens.shape)}"
            )
        if self.arcface is not None and (self.arcface.ndim != 2 or self.arcface.shape[0] < 1):
            raise ValueError(f"reference ArcFace embeddings must be (N_ref, dim), got shape {tuple(self.arcface.shape)}")
        if self.faces is not None and (self.faces.ndim != 4 or self.faces.shape[-1] != 3
                                       or self.faces.dtype != torch.uint8):
            raise ValueError(f"face thumbnails must be (N, h, w, 3) uint8, got {tuple(self.faces.shape)} "
                             f"{self.faces.dtype}")
        check_finite("ID tokens", self.tokens)
        check_finite("uncond ID tokens", self.uncond)
        check_finite("reference ArcFace embeddings", self.arcface)

    @property
    def id_dim(self) -> int:
        return self.tokens.shape[-1]

    @staticmethod
    def thumbnails(images: Tensor, size: int = 128) -> Tensor:
        """(N, H, W, 3) float images in [0, 1] -> (N, size, size, 3) uint8 thumbnails for the `faces` field."""
        x = torch.nn.functional.interpolate(images.detach().float().cpu().movedim(-1, 1), size=(size, size),
                                            mode="bilinear", antialias=True)
        return (x.clamp(0, 1) * 255).round().to(torch.uint8).movedim(1, -1).contiguous()

    def to_bytes(self) -> bytes:
        """The identity as safetensors bytes (what Save ID writes and the ID card carries)."""
        from safetensors.torch import save

        named = {"tokens": self.tokens, "uncond": self.uncond, "arcface": self.arcface}
        tensors = {k: v.detach().float().cpu().contiguous() for k, v in named.items() if v is not None}
        if self.faces is not None:
            tensors["faces"] = self.faces.cpu().contiguous()
        return save(tensors, metadata={"format": FORMAT, "meta": json.dumps(self.meta)})

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_bytes(self.to_bytes())

    @classmethod
    def load(cls, path: str | os.PathLike) -> IDEmbedding:
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ValueError(f"{path.name} is not a readable saved ID ({e}); save the identity again") from e
        return cls.from_bytes(data, path.name)

    @classmethod
    def from_bytes(cls, data: bytes, name: str) -> IDEmbedding:
        """Parse safetensors bytes (never unpickles); `name` is the file or card the bytes came from."""
        from safetensors.torch import load

        try:
            size = int.from_bytes(data[:8], "little")
            metadata = json.loads(data[8:8 + size]).get("__metadata__") or {}
            tensors = load(data)
            meta = json.loads(metadata.get("meta", "{}"))
        except Exception as e:  # safetensors, JSON, UTF-8 errors alike: the bytes are no ID
            raise ValueError(f"{name} is not a readable saved ID ({e}); save the identity again") from e
        if metadata.get("format") != FORMAT or "tokens" not in tensors:
            raise ValueError(
                f"{name} is not a PuLID-Flux ID file (format {metadata.get('format')!r}, "
                f"keys {sorted(tensors)}); create one with the Save ID node"
            )
        f32 = {k: tensors[k].to(torch.float32) for k in ("tokens", "uncond", "arcface") if k in tensors}
        try:
            return cls(**f32, meta=meta, faces=tensors.get("faces"))
        except (ValueError, TypeError) as e:
            raise ValueError(f"saved ID {name} is refused: {e}") from e

    def to_card(self, title: str) -> bytes:
        """An ID card: a PNG showing the aligned reference faces and `title`, carrying this identity's
        safetensors bytes (base64) in the text chunk CARD_KEY."""
        import base64
        import io

        from PIL import Image, ImageDraw, PngImagePlugin

        faces = self.faces[:8] if self.faces is not None else torch.full((1, 128, 128, 3), 200, dtype=torch.uint8)
        n, h, w, _ = faces.shape
        card = Image.new("RGB", (max(n * w, 256), h + 24), "white")
        card.paste(Image.fromarray(faces.movedim(0, 1).reshape(h, n * w, 3).numpy()), (0, 0))
        ImageDraw.Draw(card).text((6, h + 6), title, fill="black")
        info = PngImagePlugin.PngInfo()
        info.add_text(CARD_KEY, base64.b64encode(self.to_bytes()).decode("ascii"))
        buf = io.BytesIO()
        card.save(buf, "PNG", pnginfo=info)
        return buf.getvalue()

    @classmethod
    def from_card(cls, path: str | os.PathLike) -> IDEmbedding:
        """The identity an ID card (to_card) carries; any other image is refused with the way to make one."""
        import base64
        import binascii

        from PIL import Image

        name = Path(path).name
        try:
            with Image.open(path) as im:
                text = getattr(im, "text", {}).get(CARD_KEY)  # .text also reads chunks after the pixels
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise ValueError(f"{name} is not a readable image ({e}); upload the ID card PNG again") from e
        if not isinstance(text, str):
            raise ValueError(f"{name} is a plain image, not a PuLID-Flux ID card (no {CARD_KEY!r} chunk): make the "
                             f"identity with PuLID-Flux Encode ID; PuLID-Flux Save ID then writes its card")
        if len(text) > CARD_MAX_CHARS:
            raise ValueError(f"{name}: its {CARD_KEY!r} chunk holds {len(text)} characters, more than an ID card "
                             f"holds ({CARD_MAX_CHARS}); use a card written by PuLID-Flux Save ID")
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as e:
            raise ValueError(f"{name}: its {CARD_KEY!r} chunk is not valid base64 ({e}); the card is damaged, "
                             f"save the identity again") from e
        return cls.from_bytes(data, name)
