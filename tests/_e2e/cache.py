"""A manifest-keyed file cache for generated test models.

Every generated file is recorded in ``<cache>/manifest.json`` with the spec that produced it (kind,
shapes source, dtype, seed, generator revision). A file whose entry matches and whose size is
unchanged is reused; anything else is regenerated atomically (write to ``.tmp``, then rename).
A lock file serialises concurrent writers (two pytest processes, or a test and the demo).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

CACHE_DIR = Path(os.environ.get("PULID_CACHE_DIR", Path.home() / ".cache" / "comfyui-pulid-flux")) / "tiny-models"


@contextlib.contextmanager
def locked(cache: Path = CACHE_DIR) -> Iterator[dict]:
    """Hold the cache lock and yield the manifest dict; it is written back on exit."""
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = cache / "manifest.json"
        manifest = json.loads(path.read_text()) if path.is_file() else {}
        try:
            yield manifest
        finally:
            tmp = path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
            os.replace(tmp, path)


def ensure(manifest: dict, cache: Path, rel: str, spec: dict, write: Callable[[Path], None]) -> Path:
    """Return ``cache/rel``, (re)generating it with ``write(tmp_path)`` unless the manifest says it is current.

    ``rel`` may name a directory (e.g. an antelopev2 pack); ``write`` then fills the given directory.
    """
    path = cache / rel
    entry = manifest.get(rel)
    if entry and entry.get("spec") == spec and path.exists() and _size(path) == entry.get("bytes"):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    _remove(tmp)
    write(tmp)
    _remove(path)
    os.replace(tmp, path)
    manifest[rel] = {"spec": spec, "bytes": _size(path)}
    return path


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def _remove(path: Path) -> None:
    if path.is_dir():
        import shutil

        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
