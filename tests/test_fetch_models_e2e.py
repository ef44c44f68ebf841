"""End to end: a fresh ComfyUI base folder with this pack and an EMPTY models/ folder, then the one command
(``install.py --models``, against a local HTTP mirror holding tiny stand-ins of every file of the table under
their real names), then the shipped basic workflow, over HTTP, gives a first image. Nothing else is placed.

The Flux DiT / AE / CLIP-L are the user's own files (the command does not fetch them: the BFL repository is
gated and the Flux variant is the user's choice); they come from the tiny cache through extra_model_paths.yaml
keys that are not the pack's. The table's sizes and sha256 are swapped for the stand-ins'; names, groups,
folders and licences stay the real ones, and the workflow keeps the real PuLID / EVA file names.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import sys
from pathlib import Path

import pytest
from _file_server import serving
from conftest import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.comfyui]


def _install():
    spec = importlib.util.spec_from_file_location("pulid_install_e2e", ROOT / "install.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _stand_ins(table, pack: dict[str, Path]) -> tuple[dict[str, bytes], list]:
    """The tiny pack files under the table's names, and the table with their sizes and sha256."""
    source = {"pulid_flux_v0.9.1.safetensors": pack["pulid"], "EVA02_CLIP_L_336_psz14_s6B.pt": pack["eva"]}
    data, files = {}, []
    for f in table.FILES:
        path = source.get(f.name) or Path(pack["antelopev2" if f.group == "insightface" else "facexlib"]) / f.name
        data[f.name] = Path(path).read_bytes()
        files.append(dataclasses.replace(f, size=len(data[f.name]), sha256=hashlib.sha256(data[f.name]).hexdigest()))
    return data, files


def test_empty_models_folder_to_first_image_after_the_one_command(tmp_path):
    from conftest import import_pack, setup_comfyui

    root = setup_comfyui()
    import_pack()
    from _e2e import ui_to_api
    from _e2e.cache import CACHE_DIR
    from _e2e.comfy_models import ensure_comfy_models
    from _e2e.harness import PACK, TINY_SIZE, load_workflow, nodes_of, reference_images, tiny
    from _e2e.pack_models import ensure_pack_models
    from _e2e.server import PACK_DIR_NAME, ComfyServer

    comfy = ensure_comfy_models(CACHE_DIR)
    install = _install()
    data, files = _stand_ins(install.load_table(), ensure_pack_models(CACHE_DIR))
    base = tmp_path / "base"
    user_flux = {"base_path": str(CACHE_DIR), "diffusion_models": "comfy/diffusion_models", "vae": "comfy/vae",
                 "text_encoders": "comfy/text_encoders"}
    server = ComfyServer(root, sys.executable, base, model_paths={"my_flux": user_flux}, packs={PACK_DIR_NAME: PACK})
    assert os.listdir(base / "models") == []  # a fresh install: nothing of the pack's
    with serving(data) as (url, log):
        assert install.main(["--models", "--comfyui", str(base), "--base-url", url, "--accept-insightface-licence"],
                            files=files) == 0
    assert sorted(n for n, _, _ in log) == sorted(data)
    try:
        server.start()
        for name, png in reference_images().items():
            server.upload_image(png, name)
        api = tiny(ui_to_api.convert(load_workflow("pulid_flux_basic"), server.get_json("/object_info")))
        for node in api.values():
            node.pop("_meta", None)
            if node["class_type"] == "PuLIDFluxID_ModelLoader":  # the real names, as fetched
                node["inputs"]["pulid_file"] = "pulid_flux_v0.9.1.safetensors"
            elif node["class_type"] == "PuLIDFluxID_EvaClipLoader":
                node["inputs"]["eva_file"] = "EVA02_CLIP_L_336_psz14_s6B.pt"
        assert nodes_of(api, "PuLIDFluxID_Apply") and comfy["unet"].is_file()
        res = server.run_prompt(api, timeout=300)
        assert res.status == "success", f"{res.error!r:.2000}\n{server.tail(40)}"
        images = [im for im in res.images if im.get("type") == "output"]
        png = server.view(images[0])
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        from _e2e.harness import pixels

        assert pixels(png).shape == (TINY_SIZE, TINY_SIZE, 3)
    finally:
        server.stop()
