"""Bad inputs to apply_pulid_flux fail clearly (message asserted), and the model guard accepts only Flux.1
geometry matching the PuLID model. Plus a static check of what the pack must never do to ComfyUI."""

from __future__ import annotations

import ast
import dataclasses
import re
import types
from pathlib import Path

import pytest
import torch
from conftest import COMFYUI_ROOT, NO_COMFYUI, ROOT, setup_comfyui

if COMFYUI_ROOT is None:
    pytest.skip(NO_COMFYUI, allow_module_level=True)
setup_comfyui()

import _tiny_flux as T  # noqa: E402

from comfyui_pulid_flux.integration.patch import apply_pulid_flux  # noqa: E402


@pytest.fixture(scope="module")
def env():
    base = T.tiny_flux_patcher()
    return base, T.pulid_patcher(T.tiny_pulid_model())


def test_tiny_geometries_pass_the_guard():
    for depth, single, n_ca in ((1, 1, 2), (3, 5, 4), (2, 4, 2)):
        base = T.tiny_flux_patcher(depth=depth, depth_single_blocks=single)
        pp = T.pulid_patcher(T.tiny_pulid_model(num_ca=n_ca))
        m = apply_pulid_flux(base, pp, T.tiny_embedding())
        keys = set(m.model_options["transformer_options"]["patches_replace"]["dit"])
        assert len(keys) == n_ca  # official "+1" rule: ceil(depth/2) + ceil(single/4)
        assert ("double_block", 0) in keys and ("single_block", 0) in keys


def test_non_flux_models_are_refused(env):
    import comfy.model_base

    _, pp = env
    emb = T.tiny_embedding()
    fake = types.SimpleNamespace(model=types.SimpleNamespace(diffusion_model=torch.nn.Linear(2, 2)))
    with pytest.raises(ValueError, match=r"needs a Flux\.1 or Chroma MODEL .*got types\.SimpleNamespace"):
        apply_pulid_flux(fake, pp, emb)
    other = T.tiny_flux_patcher()
    for name in ("ChromaRadiance", "Flux2", "LongCatImage"):  # Flux subclasses with another token layout
        if hasattr(comfy.model_base, name):
            other.model.__class__ = getattr(comfy.model_base, name)
            with pytest.raises(ValueError, match=rf"needs a Flux\.1 or Chroma MODEL .*{name}"):
                apply_pulid_flux(other, pp, emb)


def test_flux2_global_modulation_is_refused(env):
    import comfy.ldm.flux.model

    _, pp = env
    if "global_modulation" in {f.name for f in dataclasses.fields(comfy.ldm.flux.model.FluxParams)}:
        flux2 = T.tiny_flux_patcher(global_modulation=True)  # ComfyUI >= 0.3.72 builds the real thing
    else:
        flux2 = T.tiny_flux_patcher()  # 0.3.64 cannot build Flux 2: mark a test-owned instance as one
        flux2.model.diffusion_model.params.global_modulation = True
    with pytest.raises(ValueError, match=r"Flux 2-style model .*Flux\.1 only"):
        apply_pulid_flux(flux2, pp, T.tiny_embedding())


def test_geometry_mismatch_is_refused(env):
    base, _ = env
    emb = T.tiny_embedding()
    with pytest.raises(ValueError, match=r"Flux\.1 model Flux .*3 double \+ 5 single blocks -> 4 ID cross-attentions.*"
                                         r"tiny_pulid\.safetensors .*3 cross-attentions.*use a full-size Flux\.1"):
        apply_pulid_flux(base, T.pulid_patcher(T.tiny_pulid_model(num_ca=3)), emb)
    with pytest.raises(ValueError, match=r"hidden 64.*PuLID model tiny_pulid\.safetensors \(hidden 32"):
        apply_pulid_flux(base, T.pulid_patcher(T.tiny_pulid_model(hidden=32)), emb)


def test_bad_inputs_fail_clearly(env):
    base, pp = env
    emb = T.tiny_embedding()
    with pytest.raises(ValueError, match=r"id_dim 48 but this PuLID model expects 32.*different PuLID model"):
        apply_pulid_flux(base, pp, T.tiny_embedding(id_dim=48))
    for bad in (float("nan"), float("inf"), "1", True):
        with pytest.raises(ValueError, match=r"weight=.* must be a finite number"):
            apply_pulid_flux(base, pp, emb, weight=bad)
    with pytest.raises(ValueError, match=r"uncond_mode 'uncond_id' needs the embedding's uncond ID"):
        apply_pulid_flux(base, pp, T.tiny_embedding(uncond=False))
    assert apply_pulid_flux(base, pp, T.tiny_embedding(uncond=False), uncond_mode="none") is not base
    with pytest.raises(ValueError, match=r"uncond_mode='zero' must be one of"):
        apply_pulid_flux(base, pp, emb, uncond_mode="zero")
    with pytest.raises(ValueError, match=r"start_percent=0.8 is after end_percent=0.2"):
        apply_pulid_flux(base, pp, emb, start_percent=0.8, end_percent=0.2)
    with pytest.raises(ValueError, match=r"end_percent=1.5 must be a number between 0.0 and 1.0"):
        apply_pulid_flux(base, pp, emb, end_percent=1.5)
    with pytest.raises(ValueError, match=r"start_step=-1 must be an integer >= 0"):
        apply_pulid_flux(base, pp, emb, start_step=-1)
    with pytest.raises(ValueError, match=r"mask must have shape \(B, H, W\) or \(H, W\), got \(1, 1, 8, 8\)"):
        apply_pulid_flux(base, pp, emb, mask=torch.ones(1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"pulid must be the PuLID model handle .*got ModelPatcher holding Flux"):
        apply_pulid_flux(base, base, emb)
    with pytest.raises(ValueError, match=r"PuLID ID embedding with tokens"):
        apply_pulid_flux(base, pp, torch.zeros(1, 8, 32))


PACK_SOURCES = [p for d in ("pulid", "integration", "nodes") for p in sorted((ROOT / d).glob("**/*.py"))]
FORBIDDEN_ATTRS = {"forward_orig", "_forward", "process_img", "forward"}


def _source_problems(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    problems = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        for t in targets:
            if isinstance(t, ast.Attribute) and t.attr in FORBIDDEN_ATTRS:
                problems.append(f"{path.name}:{node.lineno} assigns .{t.attr}")
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setattr" and len(node.args) > 1:
            name = node.args[1]
            if isinstance(name, ast.Constant) and name.value in FORBIDDEN_ATTRS:
                problems.append(f"{path.name}:{node.lineno} setattr .{name.value}")
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("comfy.ldm.flux"):
            bad = [a.name for a in node.names if a.name not in ("timestep_embedding",)]
            if bad:
                problems.append(f"{path.name}:{node.lineno} imports {bad} from {node.module}")
        device_code = path.parent.name in ("pulid", "integration")  # (nodes/ may name onnxruntime's "CUDA" provider)
        if device_code and isinstance(node, ast.Constant) and isinstance(node.value, str) and "cuda" in node.value.lower():
            problems.append(f"{path.name}:{node.lineno} 'cuda' literal")
    return problems


def test_static_no_monkey_patching_of_flux():
    assert PACK_SOURCES, "no sources found"
    problems = [p for path in PACK_SOURCES for p in _source_problems(path)]
    assert problems == []
    patch_src = (ROOT / "integration" / "patch.py").read_text()
    assert patch_src.count("def cleanup") == 1  # one hook, forwarded to the wrapped patch
    assert "args[" not in patch_src  # wrapper arguments are read by name


def test_non_finite_identities_are_refused_before_sampling(env):
    base, pp = env
    for bad in (float("nan"), float("inf"), -float("inf")):
        emb = T.tiny_embedding()
        emb.tokens[0, 3, 5] = bad
        with pytest.raises(ValueError, match=r"ID tokens hold 1 NaN or infinite value.*encode the reference images"):
            apply_pulid_flux(base, pp, emb)
        emb = T.tiny_embedding()
        emb.uncond[0, 0, 0] = bad
        with pytest.raises(ValueError, match=r"uncond ID tokens hold 1 NaN or infinite value"):
            apply_pulid_flux(base, pp, emb)


@pytest.mark.parametrize("folded", [True, False], ids=["folded", "unfolded"])
def test_finite_but_oversized_identities_are_refused(env, folded):
    """Tokens of 1e20 / 1e30 are finite in fp32 but give NaN ID tables (a black image): refused, naming the value."""
    from comfyui_pulid_flux.pulid.embedding import IDEmbedding

    base, pp = env
    emb = T.tiny_embedding()
    before = T.structure(base.model_options)
    for scale in (1e20, 1e30):
        big = IDEmbedding(tokens=emb.tokens / emb.tokens.abs().max() * scale, uncond=emb.uncond)
        with pytest.raises(ValueError, match=rf"largest \|value\| {re.escape(f'{scale:.3g}')}\) overflow the ID tables in "
                                             r"torch.float32.*encode the reference images again"):
            apply_pulid_flux(base, pp, big, folded=folded)
    huge = IDEmbedding(tokens=emb.tokens.double() * 1e300, uncond=emb.uncond)  # finite in fp64, used in fp32
    with pytest.raises(ValueError, match=r"ID tokens reach .*e\+300, which overflows torch.float32"):
        apply_pulid_flux(base, pp, huge, folded=folded)
    assert T.structure(base.model_options) == before  # nothing patched
    assert apply_pulid_flux(base, pp, IDEmbedding(tokens=emb.tokens * 1e3, uncond=emb.uncond), folded=folded) is not base
