"""UI-format workflow (what the frontend saves) → API prompt, driven by ``/object_info``.

ComfyUI has no server-side converter (the frontend's ``graphToPrompt`` does it). This covers what the
shipped workflows use and the usual pitfalls (docs/comfyui.md §4):

* ``widgets_values`` are positional over the widget inputs in ``input_order`` (required, then optional);
  an INT with ``control_after_generate`` and a COMBO with an upload flag carry one extra frontend value;
* a widget converted to a linked socket takes the link (its stale value is skipped);
* Reroute is followed, PrimitiveNode values are inlined, Note/MarkdownNote dropped, muted (mode 2) nodes
  dropped, bypassed (mode 4) nodes rewired to their first input of the same type.

``check_widgets`` reports widget values whose count or type does not fit the schema.
"""

from __future__ import annotations

VIRTUAL = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
SCALAR_WIDGETS = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
UPLOAD_FLAGS = ("image_upload", "video_upload", "audio_upload", "animated_image_upload")
MUTED, BYPASS = 2, 4


class ConversionError(ValueError):
    pass


def _opts(spec) -> dict:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def is_widget(spec) -> bool:
    if _opts(spec).get("forceInput") or _opts(spec).get("rawLink"):
        return False
    return isinstance(spec[0], list) or spec[0] in SCALAR_WIDGETS


def extra_values(spec) -> int:
    o = _opts(spec)
    return int(bool(o.get("control_after_generate"))) + int(any(o.get(f) for f in UPLOAD_FLAGS))


def combo_options(spec) -> list | None:
    if isinstance(spec[0], list):
        return spec[0]
    if spec[0] == "COMBO":
        return _opts(spec).get("options")
    return None


def widget_names(info: dict) -> list[tuple[str, list]]:
    """[(input name, spec)] of the widget inputs of one /object_info entry, in input order."""
    spec_all = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
    order = info.get("input_order") or {k: list(v) for k, v in info["input"].items() if k != "hidden"}
    names = list(order.get("required", [])) + list(order.get("optional", []))
    return [(n, spec_all[n]) for n in names if is_widget(spec_all[n])]


def _links(workflow: dict) -> dict:
    out = {}
    for link in workflow.get("links", []):
        if isinstance(link, dict):
            link = [link["id"], link["origin_id"], link["origin_slot"], link["target_id"], link["target_slot"],
                    link.get("type")]
        out[link[0]] = tuple(link[1:6])
    return out


def convert(workflow: dict, object_info: dict) -> dict:
    if workflow.get("definitions", {}).get("subgraphs"):
        raise ConversionError("subgraphs are not supported: export 'Save (API)' from the UI instead")
    nodes = {n["id"]: n for n in workflow["nodes"]}
    links = _links(workflow)

    def resolve(link_id, depth=0):
        if link_id is None or link_id not in links or depth > 64:
            return None
        src, slot, _dst, _dst_slot, typ = links[link_id]
        n = nodes.get(src)
        if n is None or n.get("mode") == MUTED:
            return None
        if n["type"] == "Reroute":
            return resolve((n.get("inputs") or [{}])[0].get("link"), depth + 1)
        if n["type"] == "PrimitiveNode":
            return ("value", n["widgets_values"][0]) if n.get("widgets_values") else None
        if n.get("mode") == BYPASS:
            outs = n.get("outputs") or []
            want = outs[slot].get("type", typ) if slot < len(outs) else typ
            for inp in n.get("inputs") or []:
                if inp.get("type") == want and inp.get("link") is not None:
                    return resolve(inp["link"], depth + 1)
            return None
        return ("link", [str(src), slot])

    prompt = {}
    for nid, n in nodes.items():
        if n["type"] in VIRTUAL or n.get("mode") in (MUTED, BYPASS):
            continue
        info = object_info.get(n["type"])
        if info is None:
            raise ConversionError(f"node {nid}: type {n['type']!r} is not in /object_info (custom node missing?)")
        spec_all = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        order = info.get("input_order") or {k: list(v) for k, v in info["input"].items() if k != "hidden"}
        linked = {i["name"]: i["link"] for i in n.get("inputs") or [] if i.get("link") is not None}
        values = list(n.get("widgets_values") or [])
        inputs, wi = {}, 0
        for name in list(order.get("required", [])) + list(order.get("optional", [])):
            spec = spec_all[name]
            if is_widget(spec):
                has_value, value = wi < len(values), values[wi] if wi < len(values) else None
                wi += 1 + extra_values(spec)
                if name in linked:
                    r = resolve(linked[name])
                    if r is not None:
                        inputs[name] = r[1]
                elif has_value:
                    inputs[name] = value
            elif name in linked:
                r = resolve(linked[name])
                if r is not None:
                    inputs[name] = r[1]
        prompt[str(nid)] = {"class_type": n["type"], "inputs": inputs,
                            "_meta": {"title": n.get("title") or info.get("display_name") or n["type"]}}
    for node in prompt.values():  # links into dropped nodes disappear, as in the frontend
        for k, v in list(node["inputs"].items()):
            if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and v[0] not in prompt:
                del node["inputs"][k]
    return prompt


def _type_ok(spec, value, check_options: bool) -> bool:
    options = combo_options(spec)
    if options is not None:
        return isinstance(value, (str, int, float)) and (not check_options or value in options)
    kind = spec[0]
    if kind == "INT":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "FLOAT":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "STRING":
        return isinstance(value, str)
    if kind == "BOOLEAN":
        return isinstance(value, bool)
    return True


def check_widgets(workflow: dict, object_info: dict, free_combos: set[str] = frozenset()) -> list[str]:
    """Problems with node types and widget values; combos named in ``free_combos`` (model files, images)
    are checked for type only, since their options depend on the files installed."""
    problems = []
    for n in workflow["nodes"]:
        if n["type"] in VIRTUAL:
            continue
        info = object_info.get(n["type"])
        if info is None:
            problems.append(f"node {n['id']}: unknown type {n['type']!r}")
            continue
        values = list(n.get("widgets_values") or [])
        expected = sum(1 + extra_values(spec) for _, spec in widget_names(info))
        if len(values) != expected:
            problems.append(f"node {n['id']} {n['type']}: {len(values)} widget values, schema has {expected}")
            continue
        wi = 0
        for name, spec in widget_names(info):
            value = values[wi]
            if not _type_ok(spec, value, check_options=name not in free_combos):
                problems.append(f"node {n['id']} {n['type']}.{name}: value {value!r} does not fit {spec[0]!r}")
            if _opts(spec).get("control_after_generate") and values[wi + 1] not in (
                    "fixed", "increment", "decrement", "randomize"):
                problems.append(f"node {n['id']} {n['type']}.{name}: bad control_after_generate {values[wi + 1]!r}")
            wi += 1 + extra_values(spec)
    return problems
