"""``install.py --models`` against a local HTTP server (tests/_file_server.py), without the internet.

The table's real entries are kept (names, groups, folders, licences); only their bytes, sizes and sha256
are those of small stand-in files, as the server holds (``--base-url``). Placement is checked with
ComfyUI's own extra_model_paths.yaml reader and the pack's folder registration and file lookup.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import logging
import os
import sys

import pytest
from _file_server import serving
from conftest import ROOT

spec = importlib.util.spec_from_file_location("pulid_install_models", ROOT / "install.py")
install = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = install
spec.loader.exec_module(install)
table = install.load_table()


def stand_ins(**sizes) -> tuple[dict[str, bytes], list]:
    """{name: bytes} and the table with their sizes / sha256 (every file unless ``sizes`` names some)."""
    data, files = {}, []
    for i, f in enumerate(table.FILES):
        blob = hashlib.sha256(f.name.encode()).digest() * (sizes.get(f.group, 2000 + 97 * i) // 32 + 1)
        data[f.name] = blob
        files.append(dataclasses.replace(f, size=len(blob), sha256=hashlib.sha256(blob).hexdigest()))
    return data, files


def tree(path) -> dict[str, bytes]:
    return {os.path.relpath(os.path.join(d, n), path): open(os.path.join(d, n), "rb").read()
            for d, _, names in os.walk(path) for n in names}


def fetch(args, files, url):
    return install.main(["--models", "--base-url", url, *args], files=files)


@pytest.fixture
def comfy(tmp_path):
    """A ComfyUI folder whose extra_model_paths.yaml sends pulid files elsewhere and puts facexlib first."""
    root = tmp_path / "ComfyUI"
    (root / "models").mkdir(parents=True)
    (root / "extra_model_paths.yaml").write_text(
        "mine:\n    base_path: ../shared\n    pulid: pulid_models\n"
        "first:\n    base_path: ../fast\n    is_default: true\n    facexlib: |\n        facexlib_a\n        facexlib_b\n")
    return root


def test_places_every_file_where_the_loaders_find_it(comfy, monkeypatch, caplog):
    from conftest import import_pack, setup_comfyui

    comfy_root = setup_comfyui()
    import_pack()
    import folder_paths

    # ComfyUI's own reader, by path (another top-level "utils" module may be imported in this process)
    reader = importlib.util.spec_from_file_location("comfy_extra_config", comfy_root / "utils" / "extra_config.py")
    extra_config = importlib.util.module_from_spec(reader)
    reader.loader.exec_module(extra_config)

    data, files = stand_ins()
    with serving(data) as (url, log), caplog.at_level(logging.INFO):
        assert fetch(["--comfyui", str(comfy), "--accept-insightface-licence"], files, url) == 0
    assert sorted(n for n, _, _ in log) == sorted(data)
    for f in files:  # the licence of every file is named
        assert f"{f.name} (" in caplog.text and f.licence in caplog.text
    # ComfyUI's state for this folder: its default folders, then the yaml read by ComfyUI's own reader
    saved = {k: (list(v[0]), set(v[1])) for k, v in folder_paths.folder_names_and_paths.items()}
    models = str(comfy / "models")
    monkeypatch.setattr(folder_paths, "models_dir", models)
    try:
        for key in ("pulid", "insightface", "facexlib"):
            folder_paths.folder_names_and_paths.pop(key, None)
        for key in ("clip_vision", "text_encoders"):
            folder_paths.folder_names_and_paths[key] = ([os.path.join(models, key)], set(folder_paths.supported_pt_extensions))
        extra_config.load_extra_path_config(str(comfy / "extra_model_paths.yaml"))
        from comfyui_pulid_flux.nodes import paths

        paths.register()
        assert paths.find_file(paths.PULID, "pulid_flux_v0.9.1.safetensors") == str(
            comfy.parent / "shared" / "pulid_models" / "pulid_flux_v0.9.1.safetensors")
        assert paths.find_file(paths.EVA_CLIP, "EVA02_CLIP_L_336_psz14_s6B.pt") == os.path.join(
            models, "clip_vision", "EVA02_CLIP_L_336_psz14_s6B.pt")
        pack = paths.insightface_pack_dirs()["antelopev2"]
        assert pack == os.path.join(models, "insightface", "models", "antelopev2")
        assert {"scrfd_10g_bnkps.onnx", "glintr100.onnx"} <= set(os.listdir(pack))
        facexlib = paths.folders(paths.FACEXLIB)[0]  # the folder FacexlibLoader tries first
        assert facexlib == str(comfy.parent / "fast" / "facexlib_b")  # is_default inserts each line first
        assert {"parsing_bisenet.pth", "detection_Resnet50_Final.pth"} <= set(os.listdir(facexlib))
    finally:
        folder_paths.folder_names_and_paths.clear()
        folder_paths.folder_names_and_paths.update(saved)
    for f in files:  # in place, checked, nothing partial left
        hits = [p for p, b in tree(comfy.parent).items() if os.path.basename(p) == f.name]
        assert len(hits) == 1 and hashlib.sha256(tree(comfy.parent)[hits[0]]).hexdigest() == f.sha256
    assert not [p for p in tree(comfy.parent) if p.endswith(".part")]


def test_checksum_mismatch_is_refused_and_leaves_nothing(tmp_path, caplog):
    data, files = stand_ins()
    bad = bytearray(data["parsing_bisenet.pth"])
    bad[100] ^= 0xFF  # same size, other bytes
    data["parsing_bisenet.pth"] = bytes(bad)
    with serving(data) as (url, _), caplog.at_level(logging.INFO):
        assert fetch(["--models-dir", str(tmp_path), "--only", "facexlib"], files, url) == 1
    assert "parsing_bisenet.pth from" in caplog.text and "refused: sha256" in caplog.text
    assert sorted(tree(tmp_path)) == ["facexlib/detection_Resnet50_Final.pth"]  # no file, no .part


def test_too_long_download_is_refused(tmp_path):
    data, files = stand_ins()
    data["pulid_flux_v0.9.1.safetensors"] += b"extra"
    with serving(data) as (url, _):
        assert fetch(["--models-dir", str(tmp_path), "--only", "pulid"], files, url) == 1
    assert tree(tmp_path) == {}


def test_interrupted_download_resumes(tmp_path):
    data, files = stand_ins(eva_clip=300_000)
    name = "EVA02_CLIP_L_336_psz14_s6B.pt"
    half = len(data[name]) // 2
    args = ["--models-dir", str(tmp_path), "--only", "eva_clip"]
    with serving(data, cut={name: half}) as (url, log):
        assert fetch(args, files, url) == 1  # the connection dropped
        assert tree(tmp_path) == {f"clip_vision/{name}.part": data[name][:half]}  # never under its final name
        assert fetch(args, files, url) == 0
    assert log == [(name, None, half), (name, f"bytes={half}-", len(data[name]) - half)]
    assert tree(tmp_path) == {f"clip_vision/{name}": data[name]}


def test_dry_run_changes_nothing(tmp_path, comfy, caplog):
    data, files = stand_ins()
    before = tree(tmp_path)
    with serving(data) as (url, log), caplog.at_level(logging.INFO):
        assert fetch(["--comfyui", str(comfy), "--dry-run", "--accept-insightface-licence"], files, url) == 0
    assert log == [] and tree(tmp_path) == before and sorted(os.listdir(tmp_path)) == ["ComfyUI"]
    for f in files:
        dest = (comfy / "models" / f.directory / f.name) if f.group != "pulid" else \
            comfy.parent / "shared" / "pulid_models" / f.name
        if f.group == "facexlib":
            dest = comfy.parent / "fast" / "facexlib_b" / f.name
        assert f"would fetch {url}/{f.name} -> {os.path.normpath(dest)}" in caplog.text


def test_non_commercial_files_need_the_flag(tmp_path, caplog):
    data, files = stand_ins()
    args = ["--models-dir", str(tmp_path)]
    with serving(data) as (url, log), caplog.at_level(logging.INFO):
        assert fetch(args, files, url) == 2  # the others are fetched, the insightface files refused
        assert "NON-COMMERCIAL" in caplog.text and "--accept-insightface-licence" in caplog.text
        assert not (tmp_path / "insightface").exists()
        assert {n for n, _, _ in log} == {f.name for f in files if not f.non_commercial}
        log.clear()
        assert fetch(args + ["--accept-insightface-licence"], files, url) == 0
    assert {n for n, _, _ in log} == {"scrfd_10g_bnkps.onnx", "glintr100.onnx"}  # the rest: present and checked
    assert sorted(os.listdir(tmp_path / "insightface" / "models" / "antelopev2")) == ["glintr100.onnx",
                                                                                    "scrfd_10g_bnkps.onnx"]


def test_present_files_are_checked_skipped_or_fetched_again(tmp_path, caplog):
    data, files = stand_ins()
    args = ["--models-dir", str(tmp_path), "--only", "facexlib"]
    with serving(data) as (url, log), caplog.at_level(logging.INFO):
        assert fetch(args, files, url) == 0
        log.clear()
        damaged = tmp_path / "facexlib" / "parsing_bisenet.pth"
        damaged.write_bytes(b"x" * len(data["parsing_bisenet.pth"]))
        assert fetch(args, files, url) == 0
    assert [n for n, _, _ in log] == ["parsing_bisenet.pth"]  # the intact one was skipped
    assert "fails its check (sha256" in caplog.text and damaged.read_bytes() == data["parsing_bisenet.pth"]


def test_unpinned_file_records_its_hash_then_checks_it(tmp_path, caplog):
    data, files = stand_ins()
    files = [dataclasses.replace(f, sha256=None) if f.group == "pulid" else f for f in files]
    args = ["--models-dir", str(tmp_path), "--only", "pulid"]
    with serving(data) as (url, log), caplog.at_level(logging.INFO):
        assert fetch(args, files, url) == 0
        assert "unpinned" in caplog.text
        record = tmp_path / "pulid" / "pulid_flux_v0.9.1.safetensors.sha256"
        assert record.read_text().split()[0] == hashlib.sha256(data["pulid_flux_v0.9.1.safetensors"]).hexdigest()
        target = tmp_path / "pulid" / "pulid_flux_v0.9.1.safetensors"
        target.write_bytes(b"y" * target.stat().st_size)  # same size: only the recorded hash tells
        log.clear()
        assert fetch(args, files, url) == 0
    assert len(log) == 1 and target.read_bytes() == data["pulid_flux_v0.9.1.safetensors"]


def test_table_pins_are_well_formed():
    assert {f.group for f in table.FILES} == set(table.GROUPS)
    assert len({f.name for f in table.FILES}) == len(table.FILES)
    for f in table.FILES:
        assert f.url.startswith("https://") and f.url.endswith("/" + f.name) and f.source.startswith("https://")
        assert f.sha256 is None or (len(f.sha256) == 64 and int(f.sha256, 16) >= 0)
        assert f.size is None or f.size > 1_000_000
        assert f.non_commercial == (f.group == "insightface")
    assert {f.name for f in table.group("facexlib")} == {"parsing_bisenet.pth", "detection_Resnet50_Final.pth"}


def test_readme_lists_the_table():
    """The README's model-file section names every file with its URL, licence and the fetch command."""
    text = (ROOT / "README.models.md" if (ROOT / "README.models.md").is_file() else ROOT / "README.md").read_text()
    assert "install.py --models" in text and table.ACCEPT_FLAG in text
    for f in table.FILES:
        assert f.name in text and f.url in text and f.source in text, f.name
        assert f"models/{f.directory}/" in text, f.directory
    assert "non-commercial" in text.lower()


@pytest.fixture
def pack_folders(tmp_path, monkeypatch):
    """The pack's folder keys pointed at tmp_path/<key> (restored afterwards); returns the paths module."""
    from conftest import import_pack, setup_comfyui

    setup_comfyui()
    import_pack()
    import folder_paths

    from comfyui_pulid_flux.nodes import paths

    for key in ("pulid", "insightface", "facexlib", "clip_vision", "text_encoders"):
        monkeypatch.setitem(folder_paths.folder_names_and_paths, key, ([str(tmp_path / key)], {".onnx", ".pth", ".pt"}))
    monkeypatch.setattr(paths, "_noted_dirs", set())
    return paths


def test_missing_file_error_names_file_folder_and_the_exact_command(pack_folders, tmp_path):
    paths = pack_folders
    with pytest.raises(FileNotFoundError) as e:
        paths.find_file(paths.PULID, "pulid_flux_v0.9.1.safetensors")
    msg = str(e.value)
    cmd = table.fetch_command("pulid", str(tmp_path / "pulid"))
    assert "'pulid_flux_v0.9.1.safetensors'" in msg and str(tmp_path / "pulid") in msg and msg.endswith(cmd)
    assert cmd.endswith(f"install.py --models --only pulid --folder {tmp_path / 'pulid'}")
    insightface = paths.where_to_get(paths.INSIGHTFACE)
    assert insightface.endswith(table.fetch_command("insightface", str(tmp_path / "insightface/models/antelopev2")))
    assert insightface.endswith(table.ACCEPT_FLAG) and "non-commercial" in insightface


def test_the_command_in_the_error_fetches_into_the_folder_looked_in(pack_folders, tmp_path):
    import shlex

    paths = pack_folders
    data, files = stand_ins()
    argv = shlex.split(table.fetch_command("facexlib", paths.folders(paths.FACEXLIB)[0]))[2:]
    with serving(data) as (url, _):
        assert fetch(argv, files, url) == 0
    assert sorted(os.listdir(tmp_path / "facexlib")) == ["detection_Resnet50_Final.pth", "parsing_bisenet.pth"]


@pytest.mark.parametrize("layout", ["nested", "insightface_root", "models_root"])
def test_antelopev2_found_in_forgiving_layouts(pack_folders, tmp_path, caplog, layout):
    where = {"nested": "insightface/models/antelopev2/antelopev2", "insightface_root": "insightface",
             "models_root": "insightface/models"}[layout]
    folder = tmp_path / where
    folder.mkdir(parents=True)
    for name in ("scrfd_10g_bnkps.onnx", "glintr100.onnx"):
        (folder / name).write_bytes(b"onnx")
    with caplog.at_level(logging.INFO):
        assert pack_folders.insightface_pack_dirs()["antelopev2"] == str(folder)
        pack_folders.insightface_pack_dirs()
    assert caplog.text.count(f"using the insightface models found in {folder}") == 1


def test_table_and_fetcher_import_only_the_standard_library():
    """install.py loads them by path before / without ComfyUI: no comfy, folder_paths, torch, or pack import."""
    import ast

    for path in (ROOT / "nodes" / "model_files.py", ROOT / "install.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{path.name}: relative import"
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert top in sys.stdlib_module_names or top in ("yaml", "torch"), f"{path.name} imports {name}"
