"""pytest plugin (``pytest_plugins = ["_e2e.fixtures"]``): the session-wide ``e2e`` server fixture, so
tests/test_e2e.py and tests/test_workflows.py share one ComfyUI start per ComfyUI version."""

from __future__ import annotations

import sys
import time

import pytest


@pytest.fixture(scope="session")
def e2e(tmp_path_factory):
    from conftest import import_pack, setup_comfyui

    root = setup_comfyui()  # skips without ComfyUI; makes comfy importable for the model makers
    import_pack()
    from .cache import CACHE_DIR
    from .comfy_models import ensure_comfy_models
    from .harness import E2E
    from .pack_models import ensure_pack_models

    t0 = time.perf_counter()
    ensure_comfy_models(CACHE_DIR)
    ensure_pack_models(CACHE_DIR)
    t_models = time.perf_counter() - t0
    env = E2E(root, sys.executable, tmp_path_factory.mktemp("comfy_base"), CACHE_DIR)
    try:
        env.start()
        env.timings = {"models_s": round(t_models, 1), "startup_s": round(env.server.startup_s or 0, 1)}
        yield env
    finally:
        env.stop()
