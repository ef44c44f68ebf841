"""Error classes of the encoders (each subclasses a built-in, so callers may catch either), and the two
helpers every loader uses: lazy imports and models shared while alive."""

from __future__ import annotations

import threading
import weakref

_shared: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
_shared_lock = threading.Lock()


class ModelFilesError(FileNotFoundError):
    """A model folder or file is missing or laid out wrongly."""


class EvaCheckpointError(ValueError):
    """An EVA-CLIP state dict cannot be used for the PuLID vision tower."""


class _AboutOneImage(Exception):
    def __init__(self, message: str, index: int | None = None):
        super().__init__(message)
        self.index = index  # which reference image


class ImageInputError(_AboutOneImage, ValueError):
    """A reference image cannot be used (type, shape, size, values)."""


class FaceNotFoundError(_AboutOneImage, RuntimeError):
    """No usable face in a reference image."""


class MissingDependencyError(ImportError):
    """An optional library of the encoders is not installed."""


def require(module: str, pip_name: str | None = None):
    """Import ``module`` lazily, or raise MissingDependencyError naming the pip package."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        pkg = pip_name or module.split(".")[0]
        raise MissingDependencyError(f"PuLID-Flux needs the Python package {pkg!r} (import {module!r} failed: {e}); "
                                     f"install it into ComfyUI's Python with: python -m pip install {pkg}") from e


def shared(key: tuple, build):
    """The object built for ``key`` while anyone holds it (same folder -> same model), else ``build()`` anew;
    nothing global keeps a model alive."""
    with _shared_lock:
        hit = _shared.get(key)
        if hit is None:
            hit = _shared[key] = build()
        return hit
