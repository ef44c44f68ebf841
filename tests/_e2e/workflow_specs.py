"""The shipped workflows, declared once as node lists, and the builder that turns them into the UI
format the frontend saves (``make_workflows.py`` then round-trips them through the real frontend).

A spec node is ``(key, class_type, widgets by input name, links by input name -> (src key, slot), (col, row)[, title])``;
``(col, row)`` orders the nodes (the frontend round trip stacks each column by the nodes' real heights), and
every node belongs to one of the GROUPS, in the order a user works.
Widget values are ordered from ``/object_info`` ``input_order``; an INT with ``control_after_generate``
gets "fixed", LoadImage's upload widget gets "image", exactly as the frontend stores them.
"""

from __future__ import annotations

import importlib.util
import sys
import uuid
from pathlib import Path

from .ui_to_api import extra_values, widget_names


def _model_files():
    """nodes/model_files.py, read as a plain module (it imports nothing from the pack)."""
    path = Path(__file__).resolve().parents[2] / "nodes" / "model_files.py"
    spec = importlib.util.spec_from_file_location("pulid_flux_model_files", path)
    mod = sys.modules.setdefault(spec.name, importlib.util.module_from_spec(spec))
    spec.loader.exec_module(mod)
    return mod.FILES

# Real file names users have; the e2e test swaps them for the tiny files.
FLUX_UNET = "flux1-dev.safetensors"
CLIP_L = "clip_l.safetensors"
T5XXL = "t5xxl_fp16.safetensors"
FLUX_VAE = "ae.safetensors"
PULID = "pulid_flux_v0.9.1.safetensors"
EVA = "EVA02_CLIP_L_336_psz14_s6B.pt"
SIZE = 1024  # two_people: square, split by the masks
PORTRAIT_W, PORTRAIT_H = 896, 1152  # the official app's default size (app_flux.py)
GUIDANCE, STEPS = 4.0, 28  # official demo defaults (app_flux.py, flux/sampling.py denoise)
TRUE_CFG = {"guidance": 1.0, "cfg": 5.0, "start_step": 1}  # official true-CFG example (docs/pulid_for_flux.md)
NEGATIVE = "bad quality, worst quality, text, signature, watermark, extra limbs"  # official app default
HF = "https://huggingface.co"
EXAMPLE_FACE = "pulid_flux_example_face.jpg"  # the pack copies workflows/<this> into input/ (nodes/__init__.py)
# properties.models of each loader: what the frontend offers to download when a file is missing. Flux, CLIP-L,
# T5 and the VAE from the ungated repositories ComfyUI's own Flux-dev template uses (the BFL one is gated).
MODELS = {
    FLUX_UNET: (f"{HF}/Comfy-Org/flux1-dev/resolve/main/flux1-dev.safetensors", "diffusion_models"),
    CLIP_L: (f"{HF}/comfyanonymous/flux_text_encoders/resolve/main/clip_l.safetensors", "text_encoders"),
    T5XXL: (f"{HF}/comfyanonymous/flux_text_encoders/resolve/main/t5xxl_fp16.safetensors", "text_encoders"),
    FLUX_VAE: (f"{HF}/Comfy-Org/Lumina_Image_2.0_Repackaged/resolve/main/split_files/vae/ae.safetensors", "vae"),
    **{f.name: (f.url, f.directory) for f in _model_files() if f.group in ("pulid", "eva_clip")},
}
MODEL_WIDGETS = {"UNETLoader": ("unet_name",), "DualCLIPLoader": ("clip_name1", "clip_name2"), "VAELoader": ("vae_name",),
                 "PuLIDFluxID_ModelLoader": ("pulid_file",), "PuLIDFluxID_EvaClipLoader": ("eva_file",)}
# Loaders whose files no widget names: their properties.models list the files all the same (the frontend only
# offers files a widget names, so these come from the one command in the README, which their errors print).
MODEL_GROUPS = {"PuLIDFluxID_FaceAnalysisLoader": "insightface", "PuLIDFluxID_FacexlibLoader": "facexlib"}
FACE_MODELS = {group: [(f.name, f.url, f.directory) for f in _model_files() if f.group == group]
               for group in MODEL_GROUPS.values()}
CORE_ID, PACK_ID = "comfy-core", "pulid-flux-id"  # cnr_id: ComfyUI itself, and this pack's registry name

ENCODE_DEFAULTS = {"face_rule": "largest", "face_index": 0, "align_source": "facexlib", "fusion": "mean",
                   "fusion_weights": "", "antialias": True}
APPLY_DEFAULTS = {"weight": 1.0, "start_percent": 0.0, "end_percent": 1.0, "start_step": 0, "uncond_mode": "uncond_id",
                  "cfg_start_step": 1}
PHOTOREAL_START = 4  # official start_step for photoreal prompts (docs/pulid_for_flux.md); 0-1 for stylised ones

# Groups in the order a user works, left to right: which columns of the layout each one holds.
GROUPS = (("1. Models", (0, 1), "#3f789e"), ("2. Your photo", (2, 3), "#8A8"), ("3. Prompt and size", (4,), "#a1309b"),
          ("4. Sample", tuple(range(5, 16)), "#b58b2a"))


def _common(prompt: str, negative: str | None, cfg: float, model_src: tuple[str, int], guidance: float = GUIDANCE,
            size: tuple[int, int] = (PORTRAIT_W, PORTRAIT_H), sampler_row: int = 1) -> list:
    nodes = [
        ("unet", "UNETLoader", {"unet_name": FLUX_UNET, "weight_dtype": "default"}, {}, (0, 0)),
        ("clip", "DualCLIPLoader", {"clip_name1": CLIP_L, "clip_name2": T5XXL, "type": "flux", "device": "default"},
         {}, (0, 1)),
        ("vae", "VAELoader", {"vae_name": FLUX_VAE}, {}, (0, 2)),
        ("pos", "CLIPTextEncode", {"text": prompt}, {"clip": ("clip", 0)}, (4, 0), "Prompt"),
        ("guid", "FluxGuidance", {"guidance": guidance}, {"conditioning": ("pos", 0)}, (4, 1)),
        ("latent", "EmptySD3LatentImage", {"width": size[0], "height": size[1], "batch_size": 1}, {}, (4, 4),
         "Image size"),
        ("sampler", "KSampler", {"seed": 42, "steps": STEPS, "cfg": cfg, "sampler_name": "euler", "scheduler": "simple",
                                 "denoise": 1.0},
         {"model": model_src, "positive": ("guid", 0), "negative": ("neg", 0), "latent_image": ("latent", 0)},
         (5, sampler_row)),
        ("decode", "VAEDecode", {}, {"samples": ("sampler", 0), "vae": ("vae", 0)}, (6, 0)),
        ("save", "SaveImage", {"filename_prefix": "pulid_flux"}, {"images": ("decode", 0)}, (6, 1)),
    ]
    if negative is None:  # fake CFG (cfg 1): the negative is ignored; zero it as core Flux templates do
        nodes.append(("neg", "ConditioningZeroOut", {}, {"conditioning": ("pos", 0)}, (4, 2),
                      "Negative (unused at cfg 1)"))
    else:
        nodes += [("negtext", "CLIPTextEncode", {"text": negative}, {"clip": ("clip", 0)}, (4, 2), "Negative prompt"),
                  ("neg", "FluxGuidance", {"guidance": guidance}, {"conditioning": ("negtext", 0)}, (4, 3))]
    return nodes


def _pulid_loaders() -> list:
    return [
        ("pulid", "PuLIDFluxID_ModelLoader", {"pulid_file": PULID}, {}, (1, 0)),
        ("eva", "PuLIDFluxID_EvaClipLoader", {"eva_file": EVA}, {}, (1, 1)),
        ("face", "PuLIDFluxID_FaceAnalysisLoader", {"model_pack": "antelopev2", "provider": "auto"}, {}, (1, 2)),
        ("fxl", "PuLIDFluxID_FacexlibLoader", {"load_detector": True}, {}, (1, 3)),
    ]


def _encode(key: str, image: tuple[str, int], pos, title: str | None = None, **widgets) -> tuple:
    node = (key, "PuLIDFluxID_EncodeIdentity", {**ENCODE_DEFAULTS, **widgets},
            {"pulid": ("pulid", 0), "eva_clip": ("eva", 0), "face_analysis": ("face", 0), "facexlib": ("fxl", 0),
             "image": image}, pos)
    return (*node, title) if title else node


def _apply(key: str, model: tuple[str, int], ident: tuple[str, int], pos, mask=None, title: str | None = None,
           **widgets) -> tuple:
    links = {"model": model, "pulid": ("pulid", 0), "identity": ident}
    if mask is not None:
        links["attn_mask"] = mask
    node = (key, "PuLIDFluxID_Apply", {**APPLY_DEFAULTS, **widgets}, links, pos)
    return (*node, title) if title else node


def _photo(key: str, pos, title: str) -> tuple:
    return (key, "LoadImage", {"image": EXAMPLE_FACE}, {}, pos, title)


def _faces_preview(pos) -> tuple:
    return ("preview", "PreviewImage", {}, {"images": ("encode", 1)}, pos, "Aligned face (EVA-CLIP input)")


PORTRAIT = "portrait photo of a person as an astronaut on the moon, detailed face, natural light"


def basic() -> list:
    return [*_common(PORTRAIT, None, 1.0, ("apply", 0)), *_pulid_loaders(),
            _photo("img", (2, 0), "Your photo"),
            _encode("encode", ("img", 0), (3, 0)),
            _faces_preview((3, 1)),
            _apply("apply", ("unet", 0), ("encode", 0), (5, 0), start_step=PHOTOREAL_START)]


def multi_reference() -> list:
    return [*_common(PORTRAIT, None, 1.0, ("apply", 0)), *_pulid_loaders(),
            _photo("img1", (2, 0), "Photo 1 of the person"),
            _photo("img2", (2, 1), "Photo 2 of the person"),
            _photo("img3", (2, 2), "Photo 3 of the person"),
            ("batch12", "ImageBatch", {}, {"image1": ("img1", 0), "image2": ("img2", 0)}, (3, 0), "Photos 1 + 2"),
            ("batch", "ImageBatch", {}, {"image1": ("batch12", 0), "image2": ("img3", 0)}, (3, 1),
             "Photos 1 + 2 + 3"),
            _encode("encode", ("batch", 0), (3, 2), fusion="mean"),
            _faces_preview((3, 3)),
            _apply("apply", ("unet", 0), ("encode", 0), (5, 0), start_step=PHOTOREAL_START)]


def two_people() -> list:
    half = SIZE // 2
    return [*_common("photo of two friends side by side in a park, both smiling, detailed faces", None, 1.0,
                     ("apply_b", 0), size=(SIZE, SIZE), sampler_row=2), *_pulid_loaders(),
            _photo("img_a", (2, 0), "Person A (left half)"),
            _photo("img_b", (2, 1), "Person B (right half)"),
            _encode("encode_a", ("img_a", 0), (3, 0), "Encode person A"),
            _encode("encode_b", ("img_b", 0), (3, 1), "Encode person B"),
            ("empty", "SolidMask", {"value": 0.0, "width": SIZE, "height": SIZE}, {}, (2, 2),
             "Mask: empty canvas (image size)"),
            ("half", "SolidMask", {"value": 1.0, "width": half, "height": SIZE}, {}, (2, 3), "Mask: one half"),
            ("left", "MaskComposite", {"x": 0, "y": 0, "operation": "add"},
             {"destination": ("empty", 0), "source": ("half", 0)}, (3, 2), "Mask: left half (person A)"),
            ("right", "MaskComposite", {"x": half, "y": 0, "operation": "add"},
             {"destination": ("empty", 0), "source": ("half", 0)}, (3, 3), "Mask: right half (person B)"),
            _apply("apply_a", ("unet", 0), ("encode_a", 0), (5, 0), mask=("left", 0), title="Apply person A (left)",
                   start_step=PHOTOREAL_START),
            _apply("apply_b", ("apply_a", 0), ("encode_b", 0), (5, 1), mask=("right", 0),
                   title="Apply person B (right)", start_step=PHOTOREAL_START)]


def true_cfg() -> list:
    return [*_common("portrait, made of ice sculpture", NEGATIVE, TRUE_CFG["cfg"], ("apply", 0),
                     guidance=TRUE_CFG["guidance"]), *_pulid_loaders(),
            _photo("img", (2, 0), "Your photo"),
            _encode("encode", ("img", 0), (3, 0)),
            _faces_preview((3, 1)),
            _apply("apply", ("unet", 0), ("encode", 0), (5, 0), uncond_mode="uncond_id",
                   start_step=TRUE_CFG["start_step"])]


SWEEP_WEIGHTS = (0.5, 1.0, 1.5)  # likeness sweep: every weight at every start step, one seed
SWEEP_STARTS = (0, 4)


def likeness_sweep() -> list:
    """The same seed at several weights and start steps, scored and drawn as one contact sheet + a chart."""
    combos = [(w, s) for s in SWEEP_STARTS for w in SWEEP_WEIGHTS]  # batch order = the sheet's order
    nodes = [n for n in _common(PORTRAIT, None, 1.0, ("apply0", 0)) if n[0] not in ("sampler", "decode", "save")]
    nodes += [*_pulid_loaders(), _photo("img", (2, 0), "Your photo"), _encode("encode", ("img", 0), (3, 0))]
    for i, (w, s) in enumerate(combos):
        nodes += [_apply(f"apply{i}", ("unet", 0), ("encode", 0), (5 + i, 0), title=f"Apply: weight {w:g}, start {s}",
                         weight=w, start_step=s),
                  (f"sampler{i}", "KSampler", {"seed": 42, "steps": STEPS, "cfg": 1.0, "sampler_name": "euler",
                                               "scheduler": "simple", "denoise": 1.0},
                   {"model": (f"apply{i}", 0), "positive": ("guid", 0), "negative": ("neg", 0),
                    "latent_image": ("latent", 0)}, (5 + i, 1), f"Sampling {i + 1} of {len(combos)}")]
        if i:
            prev = ("sampler0", 0) if i == 1 else (f"batch{i - 1}", 0)
            nodes.append((f"batch{i}", "LatentBatch", {}, {"samples1": prev, "samples2": (f"sampler{i}", 0)},
                          (5 + i, 2), f"Collect images 1-{i + 1}"))
    last = (f"batch{len(combos) - 1}", 0)
    values = ", ".join
    col = 5 + len(combos)
    nodes += [
        ("decode", "VAEDecode", {}, {"samples": last, "vae": ("vae", 0)}, (col, 0)),
        ("likeness", "PuLIDFluxID_FaceSimilarity", {"combine": "mean"},
         {"face_analysis": ("face", 0), "image": ("decode", 0), "identity": ("encode", 0)}, (col, 1)),
        ("sheet", "PuLIDFluxID_LikenessSheet",
         {"weights": values(f"{w:g}" for w, _ in combos), "start_steps": values(str(s) for _, s in combos),
          "columns": len(SWEEP_WEIGHTS)},
         {"images": ("decode", 0), "similarities": ("likeness", 1)}, (col + 1, 0)),
        ("save_sheet", "SaveImage", {"filename_prefix": "pulid_sweep_sheet"}, {"images": ("sheet", 0)}, (col + 2, 0),
         "Contact sheet"),
        ("save_chart", "SaveImage", {"filename_prefix": "pulid_sweep_chart"}, {"images": ("sheet", 1)}, (col + 2, 1),
         "Likeness against weight"),
        ("annotated", "PreviewImage", {}, {"images": ("likeness", 2)}, (col + 1, 1), "Faces found and scored"),
    ]
    return nodes


FILES_NOTE = """### Model files
The frontend offers the Flux, PuLID and EVA-CLIP files below when they are missing. One command in the pack's
folder places the PuLID, EVA-CLIP and face files (see the README, "Model files"):
`python install.py --models` (the insightface files are non-commercial: it asks you to confirm).

| file | folder |
| --- | --- |
| `flux1-dev.safetensors` | `models/diffusion_models/` |
| `clip_l.safetensors`, `t5xxl_fp16.safetensors` | `models/text_encoders/` |
| `ae.safetensors` | `models/vae/` |
| `pulid_flux_v0.9.1.safetensors` | `models/pulid/` |
| `EVA02_CLIP_L_336_psz14_s6B.pt` | `models/clip_vision/` |
| antelopev2: `scrfd_10g_bnkps.onnx`, `glintr100.onnx` | `models/insightface/models/antelopev2/` |
| `parsing_bisenet.pth`, `detection_Resnet50_Final.pth` | `models/facexlib/` |

Nothing is downloaded at run time. The example face is NASA's public-domain astronaut photo (via scikit-image),
which the pack copies into `input/`."""

ONLY_TRUE_CFG = "`uncond_mode` and `cfg_start_step` matter only at cfg > 1 (see the true-CFG workflow)."
NOTES = {
    "pulid_flux_basic": f"""**Change:** pick your photo in **Your photo** (the astronaut is an example), write your prompt, Run.
## PuLID-Flux ID: one reference photo
Official settings: Flux guidance 4, 28 steps, cfg 1, weight 1, **start_step 4**, the official choice for photoreal
prompts: the first 4 steps run without the ID, so Flux lays out the image before the face joins in. For the
closest likeness, or a stylised prompt, use start_step 0-1.
* **weight**: higher brings the face closer at the cost of style and prompt (0.9-1.0 works well with v0.9.1).
* {ONLY_TRUE_CFG}""",
    "pulid_flux_multi_reference": f"""**Change:** pick three photos of the same person in **Photo 1-3** (the astronaut is an example), Run.
## PuLID-Flux ID: several photos of one person
The photos are batched and their ID tokens averaged (`fusion = mean`): several photos steady the likeness.
Try `weighted` with one number per photo in `fusion_weights`, or `concat`. With two photos, pick one of them
twice. Settings as the basic workflow (guidance 4, 28 steps, start_step 4 for photoreal prompts).
* {ONLY_TRUE_CFG}""",
    "pulid_flux_two_people": f"""**Change:** pick person A's photo (**left half**) and person B's (**right half**), describe two people, Run.
## PuLID-Flux ID: two people in one image
Two Encode nodes and two chained Apply nodes, each limited to one half of the image by its mask (the four
**Mask** nodes; change the masks' width and height with the image size). Settings as the basic workflow
(guidance 4, 28 steps, start_step 4 for photoreal prompts).
* {ONLY_TRUE_CFG}""",
    "pulid_flux_true_cfg": """**Change:** pick your photo in **Your photo**, edit the style prompt, Run (about twice the basic workflow's time).
## PuLID-Flux ID: true CFG (the official stylised setting)
Flux guidance 1, **cfg 5** with a negative prompt, **start_step 1**: the negative pass gets the empty ID
(`uncond_mode = uncond_id`) from `cfg_start_step` 1 on, as in the official code. Two passes per step; use it for
strong styles (e.g. "made of ice sculpture") where the face must survive.""",
    "pulid_flux_likeness_sweep": """**Change:** pick your photo in **Your photo**, Run: this runs **six full samplings** (28 steps each).
## PuLID-Flux ID: likeness sweep
One seed at weights 0.5 / 1 / 1.5 and start steps 0 / 4, about six times the basic workflow's time.
**Face Similarity** scores every image against the reference (ArcFace cosine, as in the PuLID paper; no face =
0.0) and **Likeness Sheet** draws a contact sheet (weight, start step and similarity under each tile) and a chart
of similarity against weight. Edit the weights in the Apply nodes and the matching lists in the sheet node to
sweep other values.""",
}

WORKFLOWS = {
    "pulid_flux_basic": basic,
    "pulid_flux_multi_reference": multi_reference,
    "pulid_flux_two_people": two_people,
    "pulid_flux_true_cfg": true_cfg,
    "pulid_flux_likeness_sweep": likeness_sweep,
}


def note_text(name: str) -> str:
    return NOTES[name] + "\n\n" + FILES_NOTE


def build_ui(spec: list, object_info: dict, note: str = "", versions: dict[str, str] | None = None) -> dict:
    """UI-format workflow (frontend 'Save') from a spec, widget order taken from ``object_info``.

    ``note``: markdown for a MarkdownNote on the canvas; ``versions``: {cnr_id: version} for ``properties``.
    ``_layout`` (popped by make_workflows.py): each node's (col, row) and the group members, for the frontend's
    layout by real node sizes; the positions and group boxes here assume a fixed node size."""
    versions = versions or {}
    spec = [(*n, None) if len(n) == 5 else n for n in spec]
    ids = {key: i + 1 for i, (key, *_rest) in enumerate(spec)}
    links, nodes = [], []
    incoming: dict[int, dict[str, int]] = {}
    outgoing: dict[tuple[int, int], list[int]] = {}
    for key, ctype, _w, inputs, _pos, _title in spec:
        info = object_info[ctype]
        for name, (src, slot) in inputs.items():
            link_id = len(links) + 1
            src_type = object_info[spec[ids[src] - 1][1]]["output"][slot]
            links.append([link_id, ids[src], slot, ids[key], name, src_type])
            incoming.setdefault(ids[key], {})[name] = link_id
            outgoing.setdefault((ids[src], slot), []).append(link_id)
    group_of = {c: i for i, (_t, cols, _c) in enumerate(GROUPS) for c in cols}
    for key, ctype, widgets, _inputs, (col, row), title in spec:
        info = object_info[ctype]
        nid = ids[key]
        spec_all = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        order = [*info["input_order"].get("required", []), *info["input_order"].get("optional", [])]
        wnames = {n for n, _ in widget_names(info)}
        node_inputs = []
        for name in order:
            if name in wnames:
                continue  # widgets are listed as inputs only when converted / linked
            typ = spec_all[name][0]
            entry = {"name": name, "type": typ, "link": incoming.get(nid, {}).get(name)}
            if name in info["input"].get("optional", {}):
                entry["shape"] = 7  # optional socket (hollow dot), as the frontend marks it
            node_inputs.append(entry)
        values = []
        for name, wspec in widget_names(info):
            values.append(widgets[name] if name in widgets else _default(wspec))
            if extra_values(wspec):
                values.append("image" if ctype == "LoadImage" else "fixed")
        outputs = [{"name": oname, "type": otype, "links": outgoing.get((nid, slot), []), "slot_index": slot}
                   for slot, (oname, otype) in enumerate(zip(info["output_name"], info["output"]))]
        cnr = PACK_ID if ctype.startswith("PuLIDFluxID_") else CORE_ID
        props = {"Node name for S&R": ctype, "cnr_id": cnr, "ver": versions.get(cnr, "")}
        files = [widgets[w] for w in MODEL_WIDGETS.get(ctype, ()) if widgets.get(w) in MODELS]
        if files:
            props["models"] = [{"name": f, "url": MODELS[f][0], "directory": MODELS[f][1]} for f in files]
        if ctype in MODEL_GROUPS:
            props["models"] = [{"name": n, "url": u, "directory": d} for n, u, d in FACE_MODELS[MODEL_GROUPS[ctype]]]
        node = {"id": nid, "type": ctype, "pos": [40 + 420 * col + 60 * group_of[col], 40 + 300 * row], "flags": {},
                "order": nid - 1, "mode": 0, "inputs": node_inputs, "outputs": outputs,
                "properties": props, "widgets_values": values}
        if title:
            node["title"] = title
        nodes.append(node)
    # link target slots are socket indices among the node's listed inputs
    for link in links:
        target = next(n for n in nodes if n["id"] == link[3])
        link[4] = next(i for i, inp in enumerate(target["inputs"]) if inp["name"] == link[4])
    layout = {"cells": {n["id"]: spec[n["id"] - 1][4] for n in nodes}, "groups": []}
    groups = []
    for title, cols, color in GROUPS:
        members = [n for n in nodes if spec[n["id"] - 1][4][0] in cols]
        if not members:
            continue
        x0, y0 = min(n["pos"][0] for n in members) - 10, min(n["pos"][1] for n in members) - 80
        x1, y1 = max(n["pos"][0] for n in members) + 400, max(n["pos"][1] for n in members) + 280
        groups.append({"id": len(groups) + 1, "title": title, "bounding": [x0, y0, x1 - x0, y1 - y0], "color": color,
                       "font_size": 24, "flags": {}})
        layout["groups"].append([title, [n["id"] for n in members]])
    if note:  # instructions on the canvas, left of the graph
        nodes.append({"id": len(nodes) + 1, "type": "MarkdownNote", "title": "Start here", "pos": [-620, 0],
                      "size": [580, 900],
                      "flags": {}, "order": len(nodes), "mode": 0, "inputs": [], "outputs": [],
                      "properties": {}, "widgets_values": [note], "color": "#432", "bgcolor": "#653"})
    extra = {"ds": {"scale": 0.55, "offset": [600, 40]}}
    return {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, note or "pulid")), "revision": 0,
            "last_node_id": len(nodes), "last_link_id": len(links), "nodes": nodes, "links": links,
            "groups": groups, "config": {}, "extra": extra, "version": 0.4, "_layout": layout}


def _default(wspec):
    opts = wspec[1] if len(wspec) > 1 and isinstance(wspec[1], dict) else {}
    if "default" in opts:
        return opts["default"]
    options = wspec[0] if isinstance(wspec[0], list) else opts.get("options")
    return options[0] if options else None
