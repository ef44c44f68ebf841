"""IDEmbedding save/load."""

import pytest
import torch
from conftest import import_pack

import_pack()
from comfyui_pulid_flux.pulid.embedding import IDEmbedding  # noqa: E402


def test_roundtrip(tmp_path):
    e = IDEmbedding(tokens=torch.randn(2, 32, 16), uncond=torch.randn(1, 32, 16), meta={"refs": "3"})
    e.save(tmp_path / "me.safetensors")
    back = IDEmbedding.load(tmp_path / "me.safetensors")
    assert torch.equal(back.tokens, e.tokens) and torch.equal(back.uncond, e.uncond)
    assert back.meta == {"refs": "3"} and back.id_dim == 16


def test_rejects_bad_shapes_and_files(tmp_path):
    with pytest.raises(ValueError, match=r"\(N, tokens, id_dim\)"):
        IDEmbedding(tokens=torch.randn(32, 16))
    with pytest.raises(ValueError, match="does not match"):
        IDEmbedding(tokens=torch.randn(1, 32, 16), uncond=torch.randn(1, 32, 8))
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a PuLID-Flux ID file.*Save ID"):
        IDEmbedding.load(tmp_path / "other.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"xx")
    with pytest.raises(ValueError, match="not a readable saved ID"):
        IDEmbedding.load(tmp_path / "junk.safetensors")


def test_arcface_roundtrip_and_old_files(tmp_path):
    arc = torch.randn(3, 512)
    e = IDEmbedding(tokens=torch.randn(1, 32, 16), uncond=torch.randn(1, 32, 16), arcface=arc)
    e.save(tmp_path / "new.safetensors")
    back = IDEmbedding.load(tmp_path / "new.safetensors")
    assert torch.equal(back.arcface, arc) and back.arcface.dtype == torch.float32
    IDEmbedding(tokens=torch.randn(1, 32, 16)).save(tmp_path / "old.safetensors")  # an ID saved before arcface
    assert IDEmbedding.load(tmp_path / "old.safetensors").arcface is None
    with pytest.raises(ValueError, match=r"\(N_ref, dim\)"):
        IDEmbedding(tokens=torch.randn(1, 32, 16), arcface=torch.randn(512))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("where", ["tokens", "uncond", "arcface"])
def test_non_finite_ids_are_refused_also_at_load(tmp_path, bad, where):
    from safetensors.torch import save_file

    from comfyui_pulid_flux.pulid.embedding import FORMAT

    tensors = {"tokens": torch.randn(1, 32, 16), "uncond": torch.randn(1, 32, 16), "arcface": torch.randn(2, 512)}
    tensors[where][0, 0] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        IDEmbedding(**tensors)
    path = tmp_path / "corrupt.safetensors"
    save_file(tensors, str(path), metadata={"format": FORMAT, "meta": "{}"})  # as a tampered / broken file
    with pytest.raises(ValueError, match=r"corrupt\.safetensors is refused.*NaN or infinite.*encode"):
        IDEmbedding.load(path)
