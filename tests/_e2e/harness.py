"""One ComfyUI server per test session with the pack and every tiny model, plus graph helpers.

Used by tests/test_e2e.py and tests/test_workflows.py (through the ``e2e`` fixture of ``fixtures.py``)
and by scripts/demo.py. The server starts once; the plain-Flux baseline image is rendered first, on the
fresh server, before any PuLID graph has run.
"""

from __future__ import annotations

import copy
import io
import json
import shutil
from pathlib import Path

from . import ui_to_api
from .comfy_models import CLIP_L_FILE, FLUX_FILE, VAE_FILE
from .pack_models import EVA_FILE, PULID_FILE, model_paths_yaml_sections
from .server import PACK_DIR_NAME, ComfyServer, PromptResult
from .workflow_specs import EXAMPLE_FACE

PACK = Path(__file__).resolve().parent.parent.parent
WORKFLOWS = PACK / "workflows"
TINY_SIZE = 64  # latent images 64x64 -> 4x4 tokens: seconds per prompt on 2 CPU cores
TINY_STEPS = 2
WRONG_CHECKPOINT = "not_a_pulid_model.safetensors"  # in <base>/models/pulid: a Flux-like file, no PuLID keys
INCOMPLETE_PACK = "antelopev2_incomplete"  # in <base>/models/insightface/models: detector only
NO_FACE_IMAGE = "pulid_no_face.png"
# Model-file and image combos of the shipped workflows: their options depend on what is installed.
FREE_COMBOS = {"unet_name", "clip_name1", "clip_name2", "vae_name", "pulid_file", "eva_file", "image", "model_pack"}


def workflow_names() -> list[str]:
    return sorted(p.stem for p in WORKFLOWS.glob("*.json"))


def load_workflow(name: str) -> dict:
    return json.loads((WORKFLOWS / f"{name}.json").read_text())


def reference_images() -> dict[str, bytes]:
    """PNG bytes for every LoadImage name the workflows use: bright square 'faces' the tiny SCRFD detects
    (tests/_tiny_faces.py), each person at another place/brightness; plus an image with no face at all."""
    import _tiny_faces as tf
    from PIL import Image

    def png(arr) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "PNG")
        return buf.getvalue()

    faces = {
        EXAMPLE_FACE: ((32, 32, 64, 230),),  # every shipped LoadImage names it; over the pack's real photo
        "pulid_reference.png": ((32, 32, 64, 230),),
        "pulid_reference_1.png": ((32, 32, 64, 230),),
        "pulid_reference_2.png": ((40, 24, 64, 220),),
        "pulid_reference_3.png": ((24, 40, 64, 250),),
        "pulid_person_a.png": ((16, 32, 64, 240),),
        "pulid_person_b.png": ((48, 40, 64, 200),),
    }
    out = {name: png(tf.face_image(128, 128, blobs)) for name, blobs in faces.items()}
    out[NO_FACE_IMAGE] = png(tf.face_image(128, 128, blobs=()))
    return out


def tiny(api: dict, *, steps: int = TINY_STEPS, size: int = TINY_SIZE) -> dict:
    """Swap the real model names of a converted workflow for the tiny files, and shrink size and steps.
    DualCLIPLoader(flux) becomes CLIPLoader(sd3) on CLIP-L: the T5-XXL cannot be made small
    (docs/comfyui.md §5.1), and CLIP-L through the SD3 wrapper gives a Flux-shaped CONDITIONING. A start_step
    beyond the shrunk schedule is lowered to its last step, so the ID still acts."""
    api = copy.deepcopy(api)
    for node in api.values():
        ct, inp = node["class_type"], node["inputs"]
        if ct == "UNETLoader":
            inp["unet_name"] = FLUX_FILE
        elif ct == "DualCLIPLoader":
            node["class_type"], node["inputs"] = "CLIPLoader", {"clip_name": CLIP_L_FILE, "type": "sd3"}
        elif ct == "VAELoader":
            inp["vae_name"] = VAE_FILE
        elif ct == "PuLIDFluxID_ModelLoader":
            inp["pulid_file"] = PULID_FILE
        elif ct == "PuLIDFluxID_EvaClipLoader":
            inp["eva_file"] = EVA_FILE
        elif ct == "EmptySD3LatentImage":
            inp["width"] = inp["height"] = size
        elif ct == "KSampler":
            inp["steps"] = steps
        elif ct == "PuLIDFluxID_Apply":  # the photoreal start_step 4 of 28 would leave no step with the ID
            inp["start_step"] = min(inp["start_step"], steps - 1)
    return api


def nodes_of(api: dict, class_type: str) -> list[str]:
    return [k for k, v in api.items() if v["class_type"] == class_type]


def without_pulid(api: dict) -> dict:
    """The same graph with every pack node removed and the sampler fed by the UNETLoader directly."""
    api = copy.deepcopy(api)
    unet = nodes_of(api, "UNETLoader")[0]
    for k in [k for k, v in api.items() if v["class_type"].startswith("PuLIDFluxID_")]:
        del api[k]
    for k in [k for k, v in api.items() if v["class_type"] in ("PreviewImage", "LoadImage", "ImageBatch",
                                                               "SolidMask", "MaskComposite")]:
        del api[k]
    for s in nodes_of(api, "KSampler"):
        api[s]["inputs"]["model"] = [unet, 0]
    return api


def pixels(data: bytes):
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


class E2E:
    """The running server, its object_info, and helpers to queue graphs and read back images."""

    def __init__(self, comfy_root: Path, python: str, base: Path, cache: Path):
        self.base = base
        self._prepare_base()
        self.server = ComfyServer(comfy_root, python, base, model_paths=model_paths_yaml_sections(cache),
                                  packs={PACK_DIR_NAME: PACK})
        self.object_info: dict = {}
        self.baseline = None  # pixels of the plain graph on the fresh server
        self.baseline_api: dict = {}
        self.last_sampled_with_pulid = False  # did the most recent executed sampler run on a PuLID model?

    def _prepare_base(self) -> None:
        models = self.base / "models"
        (models / "pulid").mkdir(parents=True, exist_ok=True)
        wrong = models / "pulid" / WRONG_CHECKPOINT
        if not wrong.exists():  # a file from another model: safetensors with Flux-like keys
            import torch
            from safetensors.torch import save_file

            save_file({"double_blocks.0.img_attn.qkv.weight": torch.zeros(4, 4)}, str(wrong))
        incomplete = models / "insightface" / "models" / INCOMPLETE_PACK
        incomplete.mkdir(parents=True, exist_ok=True)
        import _tiny_faces as tf

        tf.build_blob_scrfd(str(incomplete / "scrfd_10g_bnkps.onnx"))

    def start(self) -> None:
        self.server.start()
        self.object_info = self.server.get_json("/object_info")
        for name, data in reference_images().items():
            self.server.upload_image(data, name)
        self.baseline_api = without_pulid(self.api("pulid_flux_basic"))  # align_source is gone with the pack nodes
        res = self.run(self.baseline_api)
        self.baseline = self.image(res)

    def stop(self) -> None:
        self.server.stop()

    def api(self, workflow: str) -> dict:
        api = tiny(ui_to_api.convert(load_workflow(workflow), self.object_info))
        for node in api.values():
            node.pop("_meta", None)  # frontend-only titles
        return api

    def run(self, api: dict, *, expect: str = "success", timeout: float = 600) -> PromptResult:
        res = self.server.run_prompt(api, timeout=timeout)
        samplers = set(nodes_of(api, "KSampler")) & res.executed_nodes
        if samplers and res.status == "success":
            self.last_sampled_with_pulid = bool(nodes_of(api, "PuLIDFluxID_Apply"))
        if res.status != expect:
            raise AssertionError(f"prompt ended {res.status!r} (wanted {expect!r}): {res.error!r:.3000}\n"
                                 f"--- server log ---\n{self.server.tail(40)}")
        return res

    def image(self, res: PromptResult, index: int = 0):
        """Pixels of the index-th image of a finished prompt, read back through /view (a PNG)."""
        images = [im for im in res.images if im.get("type") == "output"
                  and not im.get("subfolder", "").startswith("pulid_ids")]  # skip Save ID's card
        data = self.server.view(images[index])
        assert data.startswith(b"\x89PNG\r\n\x1a\n"), "/view did not return a PNG"
        return pixels(data)

    def cleanup(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)
