"""The ID card: a PNG a person reads that carries the whole identity (safetensors bytes, base64, in a text chunk).

Plain-torch side (pulid/embedding.py) and the Save / Load ID nodes called directly; the HTTP, upload-widget
and engine paths are in test_e2e_card.py, test_frontend_card.py and test_compat_distributed.py.
"""

import base64
import io

import pytest
import torch
from conftest import import_pack

import_pack()
from comfyui_pulid_flux.pulid.embedding import CARD_KEY, CARD_MAX_CHARS, IDEmbedding  # noqa: E402


def _identity(refs: int = 2, id_dim: int = 16) -> IDEmbedding:
    faces = IDEmbedding.thumbnails(torch.rand(refs, 48, 48, 3))
    return IDEmbedding(tokens=torch.randn(1, 32, id_dim), uncond=torch.randn(1, 32, id_dim),
                       arcface=torch.randn(refs, 512), meta={"fusion": "mean"}, faces=faces)


def card_with_text(text: str | None) -> bytes:
    """A PNG whose CARD_KEY chunk holds `text` (None: a plain PNG without it)."""
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    if text is not None:
        info.add_text(CARD_KEY, text)
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), "gray").save(buf, "PNG", pnginfo=info)
    return buf.getvalue()


def test_card_and_safetensors_give_bit_identical_identity(tmp_path):
    ident = _identity()
    ident.save(tmp_path / "me.safetensors")
    (tmp_path / "me.png").write_bytes(ident.to_card("me"))
    from_file, from_card = IDEmbedding.load(tmp_path / "me.safetensors"), IDEmbedding.from_card(tmp_path / "me.png")
    for a, b in ((from_file, from_card), (ident, from_card)):
        for k in ("tokens", "uncond", "arcface", "faces"):
            assert torch.equal(getattr(a, k), getattr(b, k)), k
        assert a.meta == b.meta


def test_card_shows_the_faces_and_the_name(tmp_path):
    import numpy as np
    from PIL import Image

    ident = _identity(refs=3)
    with Image.open(io.BytesIO(ident.to_card("Alice Ünïcode"))) as im:
        px = np.asarray(im.convert("RGB"))
    n, h, w, _ = ident.faces.shape
    assert px.shape[0] > h and px.shape[1] >= n * w
    for i in range(n):  # the aligned faces, side by side, pixel for pixel
        assert np.array_equal(px[:h, i * w:(i + 1) * w], ident.faces[i].numpy())
    assert (px[h:] < 128).any(), "the name is written under the faces"
    bare = IDEmbedding(tokens=torch.randn(1, 32, 16))  # an ID loaded from an older file: no faces, still a card
    (tmp_path / "bare.png").write_bytes(bare.to_card("old"))
    assert torch.equal(IDEmbedding.from_card(tmp_path / "bare.png").tokens, bare.tokens)


def test_thumbnails_are_small_uint8():
    t = IDEmbedding.thumbnails(torch.rand(2, 512, 512, 3))
    assert t.shape == (2, 128, 128, 3) and t.dtype == torch.uint8
    with pytest.raises(ValueError, match="uint8"):
        IDEmbedding(tokens=torch.randn(1, 32, 16), faces=torch.rand(1, 8, 8, 3))


def bad_cards(id_dim: int = 16) -> dict[str, tuple[bytes, tuple[str, ...]]]:
    """name -> (PNG bytes, words the error must contain); shared with the HTTP test."""
    from safetensors.torch import save

    good = _identity(id_dim=id_dim).to_bytes()
    t = torch.randn(1, 32, id_dim)
    t[0, 3, 1] = float("nan")
    nan = save({"tokens": t}, metadata={"format": "pulid-flux-id/1", "meta": "{}"})
    return {
        "card_plain.png": (card_with_text(None), ("PuLID-Flux Encode ID", "not a PuLID-Flux ID card")),
        "card_huge.png": (card_with_text("A" * (CARD_MAX_CHARS + 4)), ("characters", "PuLID-Flux Save ID")),
        "card_b64.png": (card_with_text("not base64 at all!" + base64.b64encode(good).decode()), ("base64",)),
        "card_junk.png": (card_with_text(base64.b64encode(b"\x10\x00\x00\x00\x00\x00\x00\x00{junk").decode()),
                          ("not a readable saved ID",)),
        "card_other.png": (card_with_text(base64.b64encode(save({"x": torch.zeros(2)})).decode()),
                           ("not a PuLID-Flux ID", "Save ID")),
        "card_nan.png": (card_with_text(base64.b64encode(nan).decode()), ("NaN or infinite",)),
    }


@pytest.mark.parametrize("name", sorted(bad_cards()))
def test_bad_cards_are_refused_with_the_fix(tmp_path, name):
    data, words = bad_cards()[name]
    (tmp_path / name).write_bytes(data)
    with pytest.raises(ValueError) as e:
        IDEmbedding.from_card(tmp_path / name)
    for word in (name, *words):
        assert word in str(e.value), (word, str(e.value))


def test_not_an_image_at_all(tmp_path):
    (tmp_path / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    with pytest.raises(ValueError, match="x.png is not a readable image"):
        IDEmbedding.from_card(tmp_path / "x.png")
