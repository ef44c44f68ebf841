"""The layout rules of the pack, checked on the source (docs/design.md, "Layers").

* imports flow nodes -> integration -> pulid, encoders and nodes -> likeness -> encoders; never back; pack-internal imports are relative
  (ComfyUI imports the pack under its folder name and has a top-level `nodes` module of its own);
* pulid/, encoders/ and likeness/ import without ComfyUI: no module-level comfy / folder_paths / comfy_api import;
* heavy optional libraries are imported lazily (inside functions) in encoders/ and likeness/;
* the Flux model is patched only through ModelPatcher; no "cuda" literal; files stay small.
"""

from __future__ import annotations

import ast
import re

import pytest
from conftest import ROOT

PACKAGES = ("pulid", "encoders", "likeness", "integration", "nodes")
COMFY_MODULES = ("comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "server", "execution")
LAZY_ONLY = ("insightface", "facexlib", "cv2", "open_clip", "timm", "onnxruntime", "onnx", "skimage")
FORBIDDEN_RELATIVE = {"pulid": ("encoders", "likeness", "integration", "nodes"),
                      "encoders": ("pulid", "likeness", "integration", "nodes"),
                      "likeness": ("pulid", "integration", "nodes"), "integration": ("likeness", "nodes"), "nodes": ()}
FORBIDDEN_ANYWHERE = {"pulid": ("folder_paths", "comfy_api", "numpy", "cv2"),
                      "encoders": COMFY_MODULES, "likeness": COMFY_MODULES, "integration": ("server", "comfy_api", "folder_paths"),
                      "nodes": ("server",)}
MAX_LINES = 400


def sources():
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def _top(name: str | None) -> str:
    return (name or "").split(".")[0]


def imports(tree: ast.AST):
    """(module name, level, is_module_level) for every import in a file."""
    module_level = {id(n) for n in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, 0, id(node) in module_level
        elif isinstance(node, ast.ImportFrom):
            yield node.module or "", node.level, id(node) in module_level
    # imports nested in module-level try/if blocks count as module level too
    for stmt in tree.body:
        if isinstance(stmt, (ast.Try, ast.If)):
            for node in ast.walk(stmt):
                if isinstance(node, ast.Import):
                    for a in node.names:
                        yield a.name, 0, True
                elif isinstance(node, ast.ImportFrom):
                    yield node.module or "", node.level, True


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_module_rules(path):
    pkg = path.relative_to(ROOT).parts[0]
    text = path.read_text()
    tree = ast.parse(text)
    problems = []
    for name, level, module_level in imports(tree):
        top = _top(name)
        if level == 0 and top in PACKAGES:
            problems.append(f"absolute import of pack module {name!r}: use a relative import")
        if level >= 2 and top in FORBIDDEN_RELATIVE[pkg]:
            problems.append(f"{pkg}/ must not import {top}/ (imports flow nodes -> pulid, encoders)")
        if level == 0 and top in FORBIDDEN_ANYWHERE[pkg]:
            problems.append(f"{pkg}/ must not import {name!r}")
        if level == 0 and module_level and pkg in ("pulid", "encoders", "likeness") and top in COMFY_MODULES:
            problems.append(f"module-level import of {name!r}: {pkg}/ must import without ComfyUI")
        if level == 0 and module_level and pkg in ("encoders", "likeness") and top in LAZY_ONLY:
            problems.append(f"module-level import of heavy optional {name!r}: import it inside the function")
    if re.search(r"forward_orig\s*=|setattr\([^)]*diffusion_model", text):
        problems.append("patches the Flux model directly; patch only through ModelPatcher")
    if re.search(r"""["']cuda(:\d+)?["']""", text):
        problems.append("'cuda' literal: take devices from the model / comfy.model_management")
    if re.search(r"torch\.load\((?![^)]*weights_only=True)", text):
        problems.append("torch.load without weights_only=True")
    n = len(text.splitlines())
    if n > MAX_LINES:
        problems.append(f"{n} lines: split by responsibility (limit {MAX_LINES})")
    assert not problems, "\n".join(problems)


def test_core_imports_without_comfyui(tmp_path):
    """pulid/, encoders/ and likeness/ load in a fresh interpreter that has no ComfyUI on its path."""
    import subprocess
    import sys

    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('pk', {str(ROOT / '__init__.py')!r}, "
        f"submodule_search_locations=[{str(ROOT)!r}])\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['pk'] = m; spec.loader.exec_module(m)\n"
        "import pk.pulid, pk.encoders, pk.likeness\n"
        "bad = [n for n in sys.modules if n.split('.')[0] in ('comfy', 'folder_paths', 'comfy_api', 'insightface', "
        "'facexlib', 'cv2', 'open_clip', 'timm', 'onnxruntime')]\n"
        "assert not bad, bad\n"
        "assert m.__all__ == [], m.__all__\n"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"}
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
