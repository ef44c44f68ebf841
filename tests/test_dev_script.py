"""scripts/dev.py: how ComfyUI checkouts are found, and the filter on ComfyUI's requirements."""

import importlib.util
import sys

from conftest import ROOT

spec = importlib.util.spec_from_file_location("pulid_dev", ROOT / "scripts" / "dev.py")
dev = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = dev
spec.loader.exec_module(dev)


def fake_checkout(path, version):
    path.mkdir(parents=True)
    (path / "comfyui_version.py").write_text(f'__version__ = "{version}"\n')
    return path


def test_comfyui_root_as_checkout_or_parent(tmp_path, monkeypatch):
    monkeypatch.setattr(dev, "CACHE", tmp_path / "cache")
    a = fake_checkout(tmp_path / "a", "0.3.64")
    fake_checkout(tmp_path / "parent" / "ComfyUI-0.33.0", "0.33.0")
    monkeypatch.setenv("COMFYUI_ROOT", str(a))
    assert dev.find_comfyui("0.3.64", clone=False) == a.resolve()
    monkeypatch.setenv("COMFYUI_ROOT", str(tmp_path / "parent"))
    assert dev.find_comfyui("0.33.0", clone=False) == (tmp_path / "parent" / "ComfyUI-0.33.0").resolve()


def test_wrong_version_is_not_used(tmp_path, monkeypatch):
    monkeypatch.setattr(dev, "CACHE", tmp_path / "cache")
    monkeypatch.setenv("COMFYUI_ROOT", str(fake_checkout(tmp_path / "a", "0.3.60")))
    found = dev.find_comfyui("0.3.64", clone=False)
    assert found is None or dev.comfyui_version(found) == "0.3.64"


def test_torch_lines_are_filtered_from_comfyui_requirements():
    keep = ["torchsde", "numpy>=1.25.0", "kornia>=0.7.1", "# torch comment"]
    drop = ["torch", "torchvision", "torchaudio", "torch>=2.0", "torchaudio ; sys_platform=='linux'"]
    assert not any(dev.SKIP_COMFY_REQS.match(x) for x in keep)
    assert all(dev.SKIP_COMFY_REQS.match(x) for x in drop)
