#!/usr/bin/env python3
"""The demo: one PuLID-Flux image from the shipped basic workflow, through a real ComfyUI server.

    python scripts/demo.py --comfyui /path/to/ComfyUI [--models DIR] [--out FILE] [--steps N] [--size PX]

(``scripts/demo.sh`` = ``python3 scripts/dev.py demo`` sets up the venv and calls this with it.)

* links the pack into a throw-away ComfyUI base directory's custom_nodes/ and starts ``main.py --cpu``
  (``--cpu`` is dropped with --models when a GPU is present) on 127.0.0.1 with its own database;
* with ``--models DIR`` (a ComfyUI ``models`` folder holding the real files of the README table) it runs the
  workflow as shipped; without it, tiny random-weight models made (and cached) like the tests do, so the
  image is noise but every node runs for real;
* uploads scikit-image's public-domain ``astronaut`` photo as the reference face, queues the workflow,
  saves the image, prints its path and the time taken, and stops the server.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
import tempfile
import time
from pathlib import Path

PACK = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PACK / "tests"))


def import_pack_as_package() -> None:
    """The repository as the package ``comfyui_pulid_flux`` (the tiny PuLID maker uses pulid/)."""
    spec = importlib.util.spec_from_file_location("comfyui_pulid_flux", PACK / "__init__.py",
                                                  submodule_search_locations=[str(PACK)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["comfyui_pulid_flux"] = module
    spec.loader.exec_module(module)


def astronaut_png() -> bytes:
    import io

    import skimage.data
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(skimage.data.astronaut()).save(buf, "PNG")
    return buf.getvalue()


def real_model_sections(models: Path) -> dict:
    keys = ["diffusion_models", "unet", "text_encoders", "clip", "vae", "clip_vision", "pulid", "insightface",
            "facexlib"]
    return {"pulid_flux_demo": {"base_path": str(models), **{k: k for k in keys}}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--comfyui", required=True, type=Path, help="a ComfyUI checkout (0.3.64 or newer)")
    p.add_argument("--models", type=Path, help="a ComfyUI models folder with the real weights (README table)")
    p.add_argument("--out", type=Path, help="where to write the PNG (default: ~/.cache/comfyui-pulid-flux/demo/)")
    p.add_argument("--steps", type=int, help="sampling steps (default: the workflow's 28 with --models, else 4)")
    p.add_argument("--size", type=int, help="square image side in pixels (default: the workflow's 896x1152 with --models, else 128)")
    a = p.parse_args(argv)
    t0 = time.perf_counter()

    from _e2e import ui_to_api
    from _e2e.cache import CACHE_DIR
    from _e2e.harness import load_workflow, pixels, tiny
    from _e2e.server import PACK_DIR_NAME, ComfyServer

    if a.models:
        sections = real_model_sections(a.models.resolve())
    else:
        sys.path.insert(0, str(a.comfyui.resolve()))
        import comfy.cli_args

        comfy.cli_args.args.cpu = True  # import ComfyUI as a library on any machine (GPU or not)
        import comfy.model_management  # noqa: F401

        import_pack_as_package()
        from _e2e.comfy_models import ensure_comfy_models
        from _e2e.pack_models import ensure_pack_models, model_paths_yaml_sections

        print("making / reusing the tiny random-weight models (first run: ~20 s) ...", flush=True)
        ensure_comfy_models(CACHE_DIR)
        ensure_pack_models(CACHE_DIR)
        sections = model_paths_yaml_sections(CACHE_DIR)

    base = Path(tempfile.mkdtemp(prefix="pulid_flux_demo_"))
    server = ComfyServer(a.comfyui.resolve(), sys.executable, base, model_paths=sections, packs={PACK_DIR_NAME: PACK})
    if a.models:
        import torch

        if torch.cuda.is_available():
            server.cmd.remove("--cpu")
    try:
        print(f"starting ComfyUI ({a.comfyui}) on {server.url} ...", flush=True)
        server.start()
        server.upload_image(astronaut_png(), "pulid_flux_example_face.jpg")  # the whole photo
        api = ui_to_api.convert(load_workflow("pulid_flux_basic"), server.get_json("/object_info"))
        if not a.models:
            api = tiny(api, steps=a.steps or 4, size=a.size or 128)
        for node in api.values():
            node.pop("_meta", None)
            if node["class_type"] == "EmptySD3LatentImage" and a.models and a.size:
                node["inputs"]["width"] = node["inputs"]["height"] = a.size
            if node["class_type"] == "KSampler" and a.models and a.steps:
                node["inputs"]["steps"] = a.steps
        print("queueing workflows/pulid_flux_basic.json with the astronaut photo as the reference ...", flush=True)
        res = server.run_prompt(api, timeout=3600)
        if res.status != "success":
            print(f"FAILED: {res.status}: {res.error}\n--- server log ---\n{server.tail(30)}", file=sys.stderr)
            return 1
        image = next(im for im in res.images if im.get("type") == "output")
        data = server.view(image)
        out = a.out or CACHE_DIR.parent / "demo" / f"pulid_flux_demo_{time.strftime('%Y%m%d-%H%M%S')}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
        h, w = pixels(data).shape[:2]
        kind = "real weights" if a.models else "tiny random weights: the image is noise"
        print(f"image ({w}x{h}, {kind}): {out}")
        print(f"time: {time.perf_counter() - t0:.1f} s in all (server start {server.startup_s:.1f} s, "
              f"prompt {res.wall_s:.1f} s)")
        return 0
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
