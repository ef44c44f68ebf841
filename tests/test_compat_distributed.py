"""Scale-out with robertvoy's ComfyUI-Distributed (from $PULID_THIRDPARTY_DIR): a master and a worker, two real
ComfyUI servers on 127.0.0.1 with the tiny models, run the shipped basic workflow from an ID card.

The master has every model; the worker has Flux, CLIP, the AE and the PuLID file but NO face models and NO
EVA-CLIP. The master encodes the reference and saves the identity (Save ID writes the card); the card is
uploaded to the master's input/ as a person dropping it on Load ID would. The basic workflow, its encode
replaced by Load ID(card), gets the engine's two nodes (Distributed Seed on the sampler's seed, Distributed
Collector after VAE Decode) and is POSTed to the master's /distributed/queue. The engine's own media sync
copies the card to the worker (Load ID's input is named ``image`` and the card is a .png: the two things the
engine looks for), the worker renders seed + 1, the collector brings its image back, and each image equals
the master's own render of that seed.
"""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from _e2e.harness import TINY_SIZE, nodes_of, pixels
from _e2e.pack_models import EVA_FILE
from _e2e.server import PACK_DIR_NAME, ComfyServer

pytestmark = [pytest.mark.e2e, pytest.mark.comfyui]

SEED = 424242
CARD = "alice_card.png"
FACE_AND_EVA_KEYS = ("clip", "insightface", "facexlib")  # the yaml keys of EVA-CLIP and the face models


def _distributed_config(worker_port: int) -> dict:
    """gpu_config.json of the master: itself at 127.0.0.1, one enabled remote-type worker (remote: the engine
    syncs media only to workers with a host), nothing auto-launched."""
    return {"master": {"host": "127.0.0.1"},
            "workers": [{"id": "w1", "name": "worker 1", "host": "127.0.0.1", "port": worker_port,
                         "enabled": True, "type": "remote"}],
            "settings": {"debug": True, "auto_launch_workers": False, "stop_workers_on_master_exit": False}}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    import _compat as C
    from conftest import import_pack, setup_comfyui

    root = setup_comfyui()
    import_pack()
    from _e2e.cache import CACHE_DIR
    from _e2e.comfy_models import ensure_comfy_models
    from _e2e.harness import E2E, PACK, reference_images
    from _e2e.pack_models import ensure_pack_models, model_paths_yaml_sections

    ensure_comfy_models(CACHE_DIR)
    ensure_pack_models(CACHE_DIR)
    master_base, worker_base = tmp_path_factory.mktemp("dist_master"), tmp_path_factory.mktemp("dist_worker")
    for base in (master_base, worker_base):  # each server its own copy: the engine keeps its config in its folder
        (base / "custom_nodes").mkdir(parents=True, exist_ok=True)
        C.unpack("distributed", base / "custom_nodes")
    sections = model_paths_yaml_sections(CACHE_DIR)
    worker_paths = {name: {k: v for k, v in entries.items() if k not in FACE_AND_EVA_KEYS}
                    for name, entries in sections.items()}
    worker = ComfyServer(root, sys.executable, worker_base, model_paths=worker_paths, packs={PACK_DIR_NAME: PACK})
    master = E2E(root, sys.executable, master_base, CACHE_DIR)
    config = master_base / "custom_nodes" / C.PACK_FOLDERS["distributed"] / "gpu_config.json"
    config.write_text(json.dumps(_distributed_config(worker.port)))
    try:
        with ThreadPoolExecutor(2) as pool:  # both servers start (and later stop) side by side
            for done in [pool.submit(worker.start), pool.submit(master.server.start)]:
                done.result()
        master.object_info = master.server.get_json("/object_info")  # E2E.start without its baseline render
        for name, data in reference_images().items():
            master.server.upload_image(data, name)
        assert "DistributedCollector" in master.object_info, master.server.tail(60)
        yield master, worker
    finally:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda server: server.stop(), (master.server, worker)))


def _card_graph(master, seed: int) -> dict:
    """The shipped basic workflow with the encode (face models, EVA, LoadImage) replaced by Load ID(card)."""
    api = {k: v for k, v in master.api("pulid_flux_basic").items() if not v["class_type"].startswith("PuLIDFluxID_")
           or v["class_type"] in ("PuLIDFluxID_Apply", "PuLIDFluxID_ModelLoader")}
    api = {k: v for k, v in api.items() if v["class_type"] not in ("LoadImage", "PreviewImage")}
    api["901"] = {"class_type": "PuLIDFluxID_LoadID", "inputs": {"image": CARD}}
    api[nodes_of(api, "PuLIDFluxID_Apply")[0]]["inputs"]["identity"] = ["901", 0]
    api[nodes_of(api, "KSampler")[0]]["inputs"]["seed"] = seed
    return api


def _distributed(api: dict) -> dict:
    """The engine's recipe: Distributed Seed -> the sampler's seed, Distributed Collector after VAE Decode."""
    sampler, decode, save = (nodes_of(api, t)[0] for t in ("KSampler", "VAEDecode", "SaveImage"))
    api["950"] = {"class_type": "DistributedSeed", "inputs": {"seed": api[sampler]["inputs"]["seed"]}}
    api["951"] = {"class_type": "DistributedCollector", "inputs": {"images": [decode, 0], "load_balance": False}}
    api[sampler]["inputs"]["seed"] = ["950", 0]
    api[save]["inputs"]["images"] = ["951", 0]
    return api


def _wait_history(server: ComfyServer, prompt_id: str, timeout: float = 300) -> dict:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        hist = server.get_json(f"/history/{prompt_id}")
        if prompt_id in hist and hist[prompt_id].get("status", {}).get("completed") is not None:
            return hist[prompt_id]
        time.sleep(0.5)
    raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout}s:\n{server.tail(60)}")


def test_worker_without_face_models_renders_from_the_synced_card(cluster):
    master, worker = cluster
    # the worker holds no face model and no EVA-CLIP
    info = worker.get_json("/object_info")
    assert EVA_FILE not in info["PuLIDFluxID_EvaClipLoader"]["input"]["required"]["eva_file"][1]["options"]
    assert not any(k + ":" in worker.yaml.read_text() for k in FACE_AND_EVA_KEYS)
    assert not [p for p in (worker.base / "models").rglob("*") if p.suffix in (".onnx", ".pth", ".pt")]
    # the master encodes and saves the identity; its card goes to the master's input/ as an uploaded image
    api = master.api("pulid_flux_basic")
    _ = [api[k]["inputs"].update(align_source="insightface") for k in nodes_of(api, "PuLIDFluxID_EncodeIdentity")]
    api[nodes_of(api, "KSampler")[0]]["inputs"]["seed"] = SEED
    api["900"] = {"class_type": "PuLIDFluxID_SaveID", "inputs": {
        "identity": [nodes_of(api, "PuLIDFluxID_EncodeIdentity")[0], 0], "filename_prefix": "alice"}}
    saved = master.run(api)
    encoded = master.image(saved)
    master.server.upload_image(master.server.view(saved.history["outputs"]["900"]["images"][0]), CARD)
    assert not (worker.base / "input" / CARD).exists()

    status, answer = master.server.post_json("/distributed/queue", {
        "prompt": _distributed(_card_graph(master, SEED)), "client_id": "pulid-test",
        "enabled_worker_ids": ["w1"], "delegate_master": False})
    assert status == 200 and answer.get("worker_count") == 1, (status, answer, master.server.tail(60))
    hist = _wait_history(master.server, answer["prompt_id"])
    assert hist["status"]["status_str"] == "success", (hist["status"], master.server.tail(60), worker.tail(60))
    images = [im for out in hist["outputs"].values() for im in out.get("images", []) if im["type"] == "output"]
    got = [pixels(master.server.view(im)) for im in images]
    assert len(got) == 2 and all(g.shape == (TINY_SIZE, TINY_SIZE, 3) for g in got), [g.shape for g in got]

    # the engine's media sync delivered the card, and the worker ran Load ID on it
    assert (worker.base / "input" / CARD).read_bytes() == (master.base / "input" / CARD).read_bytes()
    ran = [p["prompt"][2] for p in worker.get_json("/history").values()]
    assert any(n["class_type"] == "PuLIDFluxID_LoadID" and n["inputs"]["image"] == CARD
               for prompt in ran for n in prompt.values()), ran

    # each image equals the master's own render of its seed: the master's share (seed) is the encoded render
    # (card == encode, bit for bit), the worker's (seed + 1, Distributed Seed) a render of the card graph
    worker_seed = master.image(master.run(_card_graph(master, SEED + 1)))
    assert not np.array_equal(encoded, worker_seed)
    assert sorted(g.tobytes() for g in got) == sorted(r.tobytes() for r in (encoded, worker_seed)), \
        "an image of the run differs from the master's render of its seed"
