"""The node layer in-process: package import with and without ComfyUI, schemas, folders, fusion, Save/Load ID."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from conftest import COMFYUI_ROOT, ROOT, import_pack, setup_comfyui

PEER_NODE_IDS = {"ApplyPulidFlux", "PulidFluxModelLoader", "PulidFluxInsightFaceLoader", "PulidFluxEvaClipLoader",
                 "FixPulidFluxPatch", "PulidFluxOptions", "PulidFluxFaceDetector"}
PEER_TYPES = {"PULIDFLUX", "EVA_CLIP", "FACEANALYSIS"}
STUBS = ROOT / "tests" / "_e2e" / "stubs"

_IMPORT = (
    "import importlib.util, sys\n"
    "spec = importlib.util.spec_from_file_location('pk', {init!r}, submodule_search_locations=[{root!r}])\n"
    "m = importlib.util.module_from_spec(spec); sys.modules['pk'] = m; spec.loader.exec_module(m)\n"
    "assert not hasattr(m, 'NODE_CLASS_MAPPINGS'), 'V1 mappings would hide the V3 entrypoint'\n"
)


def _run(code: str, prelude: str = "", **env) -> subprocess.CompletedProcess:
    code = prelude + _IMPORT.format(init=str(ROOT / "__init__.py"), root=str(ROOT)) + code
    full_env = {"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1", "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True, text=True, timeout=300)


def test_package_without_comfyui_exposes_nothing(tmp_path):
    res = _run("assert m.__all__ == [] and not hasattr(m, 'comfy_entrypoint'), dir(m)\n"
               "assert 'pk.nodes' not in sys.modules\n")
    assert res.returncode == 0, res.stderr[-3000:]


@pytest.mark.comfyui
def test_package_inside_comfyui_exposes_only_the_v3_entrypoint():
    code = (
        "ext = asyncio.run(m.comfy_entrypoint())\n"
        "nodes = asyncio.run(ext.get_node_list())\n"
        "assert m.__all__ == ['comfy_entrypoint'], m.__all__\n"
        "print(len(nodes), sorted(n.GET_SCHEMA().node_id for n in nodes))\n"
    )
    prelude = "import asyncio, comfy.cli_args\ncomfy.cli_args.args.cpu = True\nimport comfy.model_management\n"
    paths = [str(COMFYUI_ROOT)] + ([str(STUBS)] if importlib.util.find_spec("torchaudio") is None else [])
    res = _run(code, prelude, PYTHONPATH=os.pathsep.join(paths))
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.startswith("10 ["), res.stdout


@pytest.fixture(scope="module")
def nodes():
    setup_comfyui()
    import_pack()
    from comfyui_pulid_flux import nodes as pack_nodes

    return pack_nodes


def test_schemas_are_unique_prefixed_and_documented(nodes):
    ids, types = set(), set()
    for cls in nodes.NODES:
        schema = cls.GET_SCHEMA()  # validates the schema the way ComfyUI does at load time
        assert schema.node_id.startswith("PuLIDFluxID_") and schema.node_id not in PEER_NODE_IDS
        assert schema.node_id not in ids
        ids.add(schema.node_id)
        assert schema.category.startswith("PuLID-Flux ID")
        assert schema.description
        for inp in schema.inputs:
            assert inp.tooltip, f"{schema.node_id}.{inp.id} has no tooltip"
            types.add(inp.get_io_type())
        types.update(out.get_io_type() for out in schema.outputs)
    ours = {t for t in types if isinstance(t, str) and t.startswith("PULIDFLUXID_")}
    assert ours == {"PULIDFLUXID_MODEL", "PULIDFLUXID_EVA_CLIP", "PULIDFLUXID_FACE_ANALYSIS", "PULIDFLUXID_FACEXLIB",
                    "PULIDFLUXID_ID"}
    assert not types & PEER_TYPES
    assert len(ids) == 10


def test_folders_keep_paths_an_extra_model_paths_yaml_defined(nodes):
    import folder_paths

    saved = {k: folder_paths.folder_names_and_paths.get(k) for k in ("pulid", "insightface", "facexlib")}
    try:
        # what extra_model_paths.yaml leaves behind: the key exists with an EMPTY extension set
        folder_paths.folder_names_and_paths["pulid"] = (["/yaml/pulid"], set())
        folder_paths.folder_names_and_paths.pop("facexlib", None)
        nodes.paths.register()
        paths, exts = folder_paths.folder_names_and_paths["pulid"]
        assert paths == ["/yaml/pulid", os.path.join(folder_paths.models_dir, "pulid")]
        assert exts == set(folder_paths.supported_pt_extensions)
        assert folder_paths.folder_names_and_paths["facexlib"] == (
            [os.path.join(folder_paths.models_dir, "facexlib")], {".pth"})
        nodes.paths.register()  # idempotent
        assert folder_paths.folder_names_and_paths["pulid"][0] == paths
    finally:
        for k, v in saved.items():
            if v is None:
                folder_paths.folder_names_and_paths.pop(k, None)
            else:
                folder_paths.folder_names_and_paths[k] = v


def test_apply_with_weight_zero_returns_the_input_model(nodes):
    from comfyui_pulid_flux.integration.handles import PulidFlux

    sentinel, pulid = object(), object.__new__(PulidFlux)  # weight 0 reads neither the PuLID model nor the ID
    out = nodes.Apply.execute(model=sentinel, pulid=pulid, identity=None, weight=0.0, start_percent=0.0,
                                         end_percent=1.0, start_step=0, uncond_mode="uncond_id")
    assert out.args[0] is sentinel
    with pytest.raises(ValueError, match=r"weight=nan must be a finite number"):  # NaN is not 0: still refused
        nodes.Apply.execute(model=sentinel, pulid=pulid, identity=None, weight=float("nan"),
                                       start_percent=0.0, end_percent=1.0, start_step=0, uncond_mode="uncond_id")


def test_fusion_modes(nodes):
    from comfyui_pulid_flux.pulid.fusion import fuse_tokens

    t = torch.randn(3, 32, 8)  # (refs, tokens, id_dim)
    assert torch.allclose(fuse_tokens(t, "mean"), t.mean(0, keepdim=True))
    w = fuse_tokens(t, "weighted", "1, 0, 3")
    assert torch.allclose(w, ((t[0] + 3 * t[2]) / 4).unsqueeze(0), atol=1e-6)
    c = fuse_tokens(t, "concat")
    assert c.shape == (1, 96, 8) and torch.equal(c[0, 32:64], t[1])
    assert fuse_tokens(t, "per_batch_item") is t
    for bad, needle in (("1, 2", "2 values for 3"), ("a, b, c", "comma-separated"), ("0, 0, 0", "not all")):
        with pytest.raises(ValueError, match=needle):
            fuse_tokens(t, "weighted", bad)
    with pytest.raises(ValueError, match="fusion 'median'"):
        fuse_tokens(t, "median")


def test_save_and_load_id_roundtrip(nodes, tmp_path):
    import folder_paths

    from comfyui_pulid_flux.pulid.embedding import IDEmbedding

    old_out, old_in = folder_paths.get_output_directory(), folder_paths.get_input_directory()
    folder_paths.set_output_directory(str(tmp_path / "output"))
    folder_paths.set_input_directory(str(tmp_path / "input"))
    try:
        ident = IDEmbedding(tokens=torch.randn(1, 64, 16), uncond=torch.randn(1, 32, 16), meta={"fusion": "concat"})
        first = nodes.SaveID.execute(identity=ident, filename_prefix="people/me").args[0]
        second = nodes.SaveID.execute(identity=ident, filename_prefix="people/me").args[0]
        assert first == "pulid_ids/people/me_00001_.safetensors [output]"
        assert second == "pulid_ids/people/me_00002_.safetensors [output]"
        for bad in ("../../escaped", "../x", "a/../../b", str(tmp_path / "abs"), "..", "", "  ", "..\\..\\w"):
            with pytest.raises(ValueError, match=r"filename_prefix .* must be a relative file name inside output"):
                nodes.SaveID.execute(identity=ident, filename_prefix=bad)
        written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*_.*"))
        assert written == [f"output/pulid_ids/people/me_0000{i}_.{ext}" for i in (1, 2) for ext in ("png", "safetensors")]
        (tmp_path / "input" / "pulid_ids").mkdir(parents=True)
        ident.save(tmp_path / "input" / "pulid_ids" / "shared.safetensors")
        listed = nodes.id_io.saved_ids()
        assert listed == [first, second, "pulid_ids/shared.safetensors [input]"]
        assert listed == nodes.LoadID.GET_SCHEMA().inputs[0].options  # the dropdown is recomputed
        # each save also wrote its ID card; one uploaded to input/ is listed after the saved files
        card = tmp_path / "output" / "pulid_ids" / "people" / "me_00002_.png"
        (tmp_path / "input" / "me_card.png").write_bytes(card.read_bytes())
        assert nodes.LoadID.GET_SCHEMA().inputs[0].options == listed + ["me_card.png"]
        for name in listed + ["me_card.png"]:
            loaded = nodes.LoadID.execute(image=name).args[0]
            assert torch.equal(loaded.tokens, ident.tokens) and torch.equal(loaded.uncond, ident.uncond)
            assert loaded.meta == ident.meta
        with pytest.raises(FileNotFoundError, match="PuLID-Flux Save ID"):
            nodes.LoadID.execute(image="pulid_ids/gone.safetensors [output]")
        with pytest.raises(ValueError, match="has a name of 300 bytes.*under 200"):
            nodes.SaveID.execute(identity=ident, filename_prefix="x" * 300)
        assert nodes.SaveID.execute(identity=ident, filename_prefix="y" * 200).args[0].endswith("_00001_.safetensors [output]")
    finally:
        folder_paths.set_output_directory(old_out)
        folder_paths.set_input_directory(old_in)


def test_encode_refuses_an_eva_tower_of_another_size(nodes):
    from types import SimpleNamespace

    from comfyui_pulid_flux.encoders import EVA02_CLIP_L_336, EvaCheckpointError
    from comfyui_pulid_flux.integration.handles import PulidFlux

    pulid = object.__new__(PulidFlux)  # only its ID encoder's widths are read before the check
    pulid.model = SimpleNamespace(pulid_encoder=SimpleNamespace(vit_dim=1024, id_in_dim=1280, num_vit_taps=5))
    narrow = SimpleNamespace(tower=SimpleNamespace(config=replace(EVA02_CLIP_L_336, width=64, num_heads=1,
                                                                  embed_dim=32)), name="eva_narrow.pt")
    with pytest.raises(EvaCheckpointError, match=r"eva_narrow.pt: .* \(64, 32, 5\) do not fit the PuLID model's ID "
                                                 r"encoder \(1024, 768, 5\)"):
        pulid.encode(narrow, torch.zeros(1, 8, 8, 3), None, None)


def test_every_model_file_of_the_table_is_in_the_readme(nodes):
    readme = (ROOT / "README.md").read_text()
    for key, entry in nodes.paths.MODEL_FILES.items():
        for name in entry.files:
            assert name in readme, f"{key}: {name} is not in README.md"
        assert entry.source in readme and entry.licence in readme, key
