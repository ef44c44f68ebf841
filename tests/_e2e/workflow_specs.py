"""The shipped workflows, declared once as node lists, and the builder that turns them into the UI
format the frontend saves (``make_workflows.py`` then round-trips them through the real frontend).

A spec node is ``(key, class_type, widgets by input name, links by input name -> (src key, slot), (col, row))``.
Widget values are ordered from ``/object_info`` ``input_order``; an INT with ``control_after_generate``
gets "fixed", LoadImage's upload widget gets "image", exactly as the frontend stores them.
"""

from __future__ import annotations

import uuid

from .ui_to_api import extra_values, widget_names

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
# properties.models of each loader: what the frontend offers to download when a file is missing.
MODELS = {
    FLUX_UNET: (f"{HF}/black-forest-labs/FLUX.1-dev/resolve/main/flux1-dev.safetensors", "diffusion_models"),
    CLIP_L: (f"{HF}/comfyanonymous/flux_text_encoders/resolve/main/clip_l.safetensors", "text_encoders"),
    T5XXL: (f"{HF}/comfyanonymous/flux_text_encoders/resolve/main/t5xxl_fp16.safetensors", "text_encoders"),
    FLUX_VAE: (f"{HF}/black-forest-labs/FLUX.1-dev/resolve/main/ae.safetensors", "vae"),
    PULID: (f"{HF}/guozinan/PuLID/resolve/main/pulid_flux_v0.9.1.safetensors", "pulid"),
    EVA: (f"{HF}/QuanSun/EVA-CLIP/resolve/main/EVA02_CLIP_L_336_psz14_s6B.pt", "clip_vision"),
}
MODEL_WIDGETS = {"UNETLoader": ("unet_name",), "DualCLIPLoader": ("clip_name1", "clip_name2"), "VAELoader": ("vae_name",),
                 "PuLIDFluxID_ModelLoader": ("pulid_file",), "PuLIDFluxID_EvaClipLoader": ("eva_file",)}
CORE_ID, PACK_ID = "comfy-core", "pulid-flux-id"  # cnr_id: ComfyUI itself, and this pack's registry name

ENCODE_DEFAULTS = {"face_rule": "largest", "face_index": 0, "align_source": "facexlib", "fusion": "mean",
                   "fusion_weights": "", "antialias": True}
APPLY_DEFAULTS = {"weight": 1.0, "start_percent": 0.0, "end_percent": 1.0, "start_step": 0, "uncond_mode": "uncond_id",
                  "cfg_start_step": 1}


def _common(prompt: str, negative: str | None, cfg: float, model_src: tuple[str, int], guidance: float = GUIDANCE,
            size: tuple[int, int] = (PORTRAIT_W, PORTRAIT_H)) -> list:
    nodes = [
        ("unet", "UNETLoader", {"unet_name": FLUX_UNET, "weight_dtype": "default"}, {}, (0, 0)),
        ("clip", "DualCLIPLoader", {"clip_name1": CLIP_L, "clip_name2": T5XXL, "type": "flux", "device": "default"},
         {}, (0, 1)),
        ("vae", "VAELoader", {"vae_name": FLUX_VAE}, {}, (0, 2)),
        ("pos", "CLIPTextEncode", {"text": prompt}, {"clip": ("clip", 0)}, (3, 1)),
        ("guid", "FluxGuidance", {"guidance": guidance}, {"conditioning": ("pos", 0)}, (4, 1)),
        ("latent", "EmptySD3LatentImage", {"width": size[0], "height": size[1], "batch_size": 1}, {}, (4, 3)),
        ("sampler", "KSampler", {"seed": 42, "steps": STEPS, "cfg": cfg, "sampler_name": "euler", "scheduler": "simple",
                                 "denoise": 1.0},
         {"model": model_src, "positive": ("guid", 0), "negative": ("neg", 0), "latent_image": ("latent", 0)}, (5, 0)),
        ("decode", "VAEDecode", {}, {"samples": ("sampler", 0), "vae": ("vae", 0)}, (6, 0)),
        ("save", "SaveImage", {"filename_prefix": "pulid_flux"}, {"images": ("decode", 0)}, (6, 1)),
    ]
    if negative is None:  # fake CFG (cfg 1): the negative is ignored; zero it as core Flux templates do
        nodes.append(("neg", "ConditioningZeroOut", {}, {"conditioning": ("pos", 0)}, (4, 2)))
    else:
        nodes += [("negtext", "CLIPTextEncode", {"text": negative}, {"clip": ("clip", 0)}, (3, 2)),
                  ("neg", "FluxGuidance", {"guidance": guidance}, {"conditioning": ("negtext", 0)}, (4, 2))]
    return nodes


def _pulid_loaders() -> list:
    return [
        ("pulid", "PuLIDFluxID_ModelLoader", {"pulid_file": PULID}, {}, (1, 0)),
        ("eva", "PuLIDFluxID_EvaClipLoader", {"eva_file": EVA}, {}, (1, 1)),
        ("face", "PuLIDFluxID_FaceAnalysisLoader", {"model_pack": "antelopev2", "provider": "auto"}, {}, (1, 2)),
        ("fxl", "PuLIDFluxID_FacexlibLoader", {"load_detector": True}, {}, (1, 3)),
    ]


def _encode(key: str, image: tuple[str, int], pos, **widgets) -> tuple:
    return (key, "PuLIDFluxID_EncodeIdentity", {**ENCODE_DEFAULTS, **widgets},
            {"pulid": ("pulid", 0), "eva_clip": ("eva", 0), "face_analysis": ("face", 0), "facexlib": ("fxl", 0),
             "image": image}, pos)


def _apply(key: str, model: tuple[str, int], ident: tuple[str, int], pos, mask=None, **widgets) -> tuple:
    links = {"model": model, "pulid": ("pulid", 0), "identity": ident}
    if mask is not None:
        links["attn_mask"] = mask
    return (key, "PuLIDFluxID_Apply", {**APPLY_DEFAULTS, **widgets}, links, pos)


PORTRAIT = "portrait photo of a person as an astronaut on the moon, detailed face, natural light"


def basic() -> list:
    return [*_common(PORTRAIT, None, 1.0, ("apply", 0)), *_pulid_loaders(),
            ("img", "LoadImage", {"image": "pulid_reference.png"}, {}, (2, 2)),
            _encode("encode", ("img", 0), (2, 0)),
            ("preview", "PreviewImage", {}, {"images": ("encode", 1)}, (3, 3)),
            _apply("apply", ("unet", 0), ("encode", 0), (3, 0))]


def multi_reference() -> list:
    return [*_common(PORTRAIT, None, 1.0, ("apply", 0)), *_pulid_loaders(),
            ("img1", "LoadImage", {"image": "pulid_reference_1.png"}, {}, (1, 4)),
            ("img2", "LoadImage", {"image": "pulid_reference_2.png"}, {}, (1, 5)),
            ("img3", "LoadImage", {"image": "pulid_reference_3.png"}, {}, (1, 6)),
            ("batch12", "ImageBatch", {}, {"image1": ("img1", 0), "image2": ("img2", 0)}, (2, 4)),
            ("batch", "ImageBatch", {}, {"image1": ("batch12", 0), "image2": ("img3", 0)}, (2, 5)),
            _encode("encode", ("batch", 0), (2, 0), fusion="mean"),
            ("preview", "PreviewImage", {}, {"images": ("encode", 1)}, (3, 3)),
            _apply("apply", ("unet", 0), ("encode", 0), (3, 0))]


def two_people() -> list:
    half = SIZE // 2
    return [*_common("photo of two friends side by side in a park, both smiling, detailed faces", None, 1.0,
                     ("apply_b", 0), size=(SIZE, SIZE)), *_pulid_loaders(),
            ("img_a", "LoadImage", {"image": "pulid_person_a.png"}, {}, (1, 4)),
            ("img_b", "LoadImage", {"image": "pulid_person_b.png"}, {}, (1, 5)),
            _encode("encode_a", ("img_a", 0), (2, 0)),
            _encode("encode_b", ("img_b", 0), (2, 2)),
            ("empty", "SolidMask", {"value": 0.0, "width": SIZE, "height": SIZE}, {}, (2, 4)),
            ("half", "SolidMask", {"value": 1.0, "width": half, "height": SIZE}, {}, (2, 5)),
            ("left", "MaskComposite", {"x": 0, "y": 0, "operation": "add"},
             {"destination": ("empty", 0), "source": ("half", 0)}, (3, 4)),
            ("right", "MaskComposite", {"x": half, "y": 0, "operation": "add"},
             {"destination": ("empty", 0), "source": ("half", 0)}, (3, 5)),
            _apply("apply_a", ("unet", 0), ("encode_a", 0), (3, 0), mask=("left", 0)),
            _apply("apply_b", ("apply_a", 0), ("encode_b", 0), (4, 0), mask=("right", 0))]


def true_cfg() -> list:
    return [*_common("portrait, made of ice sculpture", NEGATIVE, TRUE_CFG["cfg"], ("apply", 0),
                     guidance=TRUE_CFG["guidance"]), *_pulid_loaders(),
            ("img", "LoadImage", {"image": "pulid_reference.png"}, {}, (2, 2)),
            _encode("encode", ("img", 0), (2, 0)),
            _apply("apply", ("unet", 0), ("encode", 0), (3, 0), uncond_mode="uncond_id",
                   start_step=TRUE_CFG["start_step"])]


SWEEP_WEIGHTS = (0.5, 1.0, 1.5)  # likeness sweep: every weight at every start step, one seed
SWEEP_STARTS = (0, 4)


def likeness_sweep() -> list:
    """The same seed at several weights and start steps, scored and drawn as one contact sheet + a chart."""
    combos = [(w, s) for s in SWEEP_STARTS for w in SWEEP_WEIGHTS]  # batch order = the sheet's order
    nodes = [n for n in _common(PORTRAIT, None, 1.0, ("apply0", 0)) if n[0] not in ("sampler", "decode", "save")]
    nodes += [*_pulid_loaders(), ("img", "LoadImage", {"image": "pulid_reference.png"}, {}, (2, 2)),
              _encode("encode", ("img", 0), (2, 0))]
    for i, (w, s) in enumerate(combos):
        nodes += [_apply(f"apply{i}", ("unet", 0), ("encode", 0), (5 + i, 0), weight=w, start_step=s),
                  (f"sampler{i}", "KSampler", {"seed": 42, "steps": STEPS, "cfg": 1.0, "sampler_name": "euler",
                                               "scheduler": "simple", "denoise": 1.0},
                   {"model": (f"apply{i}", 0), "positive": ("guid", 0), "negative": ("neg", 0),
                    "latent_image": ("latent", 0)}, (5 + i, 1))]
        if i:
            prev = ("sampler0", 0) if i == 1 else (f"batch{i - 1}", 0)
            nodes.append((f"batch{i}", "LatentBatch", {}, {"samples1": prev, "samples2": (f"sampler{i}", 0)},
                          (5 + i, 2)))
    last = (f"batch{len(combos) - 1}", 0)
    values = ", ".join
    nodes += [
        ("decode", "VAEDecode", {}, {"samples": last, "vae": ("vae", 0)}, (11, 0)),
        ("likeness", "PuLIDFluxID_FaceSimilarity", {"references": "mean"},
         {"face_analysis": ("face", 0), "image": ("decode", 0), "identity": ("encode", 0)}, (12, 0)),
        ("sheet", "PuLIDFluxID_LikenessSheet",
         {"weights": values(f"{w:g}" for w, _ in combos), "start_steps": values(str(s) for _, s in combos),
          "columns": len(SWEEP_WEIGHTS)},
         {"images": ("decode", 0), "similarities": ("likeness", 1)}, (13, 0)),
        ("save_sheet", "SaveImage", {"filename_prefix": "pulid_sweep_sheet"}, {"images": ("sheet", 0)}, (14, 0)),
        ("save_chart", "SaveImage", {"filename_prefix": "pulid_sweep_chart"}, {"images": ("sheet", 1)}, (14, 1)),
        ("annotated", "PreviewImage", {}, {"images": ("likeness", 2)}, (13, 2)),
    ]
    return nodes


FILES_NOTE = """### Model files
| file | folder |
| --- | --- |
| `flux1-dev.safetensors` | `models/diffusion_models/` |
| `clip_l.safetensors`, `t5xxl_fp16.safetensors` | `models/text_encoders/` |
| `ae.safetensors` | `models/vae/` |
| `pulid_flux_v0.9.1.safetensors` | `models/pulid/` |
| `EVA02_CLIP_L_336_psz14_s6B.pt` | `models/clip_vision/` |
| antelopev2: `scrfd_10g_bnkps.onnx`, `glintr100.onnx` | `models/insightface/models/antelopev2/` (files directly in it) |
| `parsing_bisenet.pth`, `detection_Resnet50_Final.pth` | `models/facexlib/` |

The loaders offer the first six for download when they are missing. antelopev2:
huggingface.co/DIAMONIK7777/antelopev2; facexlib: github.com/xinntao/facexlib/releases (v0.2.0, v0.1.0).
Nothing is downloaded at run time.

Pick your photo(s) in the Load Image node(s): a clear, front-facing face works best."""

NOTES = {
    "pulid_flux_basic": """## PuLID-Flux ID: one reference photo
Official defaults: Flux guidance 4, 28 steps, cfg 1 (fake CFG), weight 1, start_step 0.
* **weight**: higher brings the face closer at the cost of style and prompt (0.9-1.0 works well with v0.9.1).
* Image too stiff, prompt ignored: **start_step** 1-4 (4 is the official photoreal setting) lets Flux lay out
  the image before the ID joins in.""",
    "pulid_flux_multi_reference": """## PuLID-Flux ID: several photos of one person
The three references are batched and their ID tokens averaged (`fusion = mean`). Try `weighted` with one
number per photo in `fusion_weights`, or `concat`. Settings as the basic workflow (guidance 4, 28 steps).""",
    "pulid_flux_two_people": """## PuLID-Flux ID: two people in one image
Two Encode nodes, two chained Apply nodes, each limited to one half of the image by a mask. Describe two
people in the prompt; put person A's photo in the first Load Image and person B's in the second.""",
    "pulid_flux_true_cfg": """## PuLID-Flux ID: true CFG (the official stylised setting)
Flux guidance 1, **cfg 5** with a negative prompt, **start_step 1**: the negative pass gets the empty ID
(`uncond_mode = uncond_id`), as in the official code. About twice the sampling time of fake CFG; use it for
strong styles (e.g. "made of ice sculpture") where the face must survive.""",
    "pulid_flux_likeness_sweep": """## PuLID-Flux ID: likeness sweep
One seed at weights 0.5 / 1 / 1.5 and start steps 0 / 4. **Face Similarity** scores every image against the
reference (ArcFace cosine, as in the PuLID paper; no face = 0.0) and **Likeness Sheet** draws a contact sheet
(weight, start step and similarity under each tile) and a chart of similarity against weight. Edit the weights
in the Apply nodes and the matching lists in the sheet node to sweep other values.""",
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

    ``note``: markdown for a MarkdownNote on the canvas; ``versions``: {cnr_id: version} for ``properties``."""
    versions = versions or {}
    ids = {key: i + 1 for i, (key, *_rest) in enumerate(spec)}
    links, nodes = [], []
    incoming: dict[int, dict[str, int]] = {}
    outgoing: dict[tuple[int, int], list[int]] = {}
    for key, ctype, _w, inputs, _pos in spec:
        info = object_info[ctype]
        for name, (src, slot) in inputs.items():
            link_id = len(links) + 1
            src_type = object_info[spec[ids[src] - 1][1]]["output"][slot]
            links.append([link_id, ids[src], slot, ids[key], name, src_type])
            incoming.setdefault(ids[key], {})[name] = link_id
            outgoing.setdefault((ids[src], slot), []).append(link_id)
    for key, ctype, widgets, _inputs, (col, row) in spec:
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
        nodes.append({"id": nid, "type": ctype, "pos": [40 + 420 * col, 40 + 260 * row], "flags": {},
                      "order": nid - 1, "mode": 0, "inputs": node_inputs, "outputs": outputs,
                      "properties": props, "widgets_values": values})
    # link target slots are socket indices among the node's listed inputs
    for link in links:
        target = next(n for n in nodes if n["id"] == link[3])
        link[4] = next(i for i, inp in enumerate(target["inputs"]) if inp["name"] == link[4])
    if note:  # instructions on the canvas, left of the graph
        nodes.append({"id": len(nodes) + 1, "type": "MarkdownNote", "pos": [-560, 40], "size": [540, 720],
                      "flags": {}, "order": len(nodes), "mode": 0, "inputs": [], "outputs": [],
                      "properties": {}, "widgets_values": [note], "color": "#432", "bgcolor": "#653"})
    extra = {"ds": {"scale": 0.55, "offset": [600, 40]}}
    return {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, note or "pulid")), "revision": 0,
            "last_node_id": len(nodes), "last_link_id": len(links), "nodes": nodes, "links": links,
            "groups": [], "config": {}, "extra": extra, "version": 0.4}


def _default(wspec):
    opts = wspec[1] if len(wspec) > 1 and isinstance(wspec[1], dict) else {}
    if "default" in opts:
        return opts["default"]
    options = wspec[0] if isinstance(wspec[0], list) else opts.get("options")
    return options[0] if options else None
