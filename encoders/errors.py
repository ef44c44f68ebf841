"""Error classes of the encoders (all subclass a built-in, so callers may catch either).

* ``ModelFilesError`` (FileNotFoundError): a model folder or file is missing; the message names the
  folder, the expected file names and where to get them.
* ``EvaCheckpointError`` (ValueError): an EVA-CLIP checkpoint is unreadable, of another model, or has
  missing / unexpected / mis-shaped vision keys (named in the message).
* ``ImageInputError`` (ValueError): an input image is unusable (shape, size, channels); names its index.
* ``FaceNotFoundError`` (RuntimeError): no face in a reference image; names its index and what to try.
* ``MissingDependencyError`` (ImportError): an optional library (insightface, facexlib, timm, cv2,
  onnxruntime) is not installed; names the pip command.
"""

from __future__ import annotations


class ModelFilesError(FileNotFoundError):
    """A model folder or file is missing or laid out wrongly."""


class EvaCheckpointError(ValueError):
    """An EVA-CLIP checkpoint cannot be used for the PuLID vision tower."""


class ImageInputError(ValueError):
    """An input image cannot be used (shape, size, channels, value range)."""

    def __init__(self, message: str, index: int | None = None):
        super().__init__(message)
        self.index = index


class FaceNotFoundError(RuntimeError):
    """No usable face in a reference image."""

    def __init__(self, message: str, index: int | None = None):
        super().__init__(message)
        self.index = index


class MissingDependencyError(ImportError):
    """An optional library needed by the encoders is not installed."""


def require(module: str, pip_name: str | None = None):
    """Import ``module`` lazily, or raise MissingDependencyError naming the pip package."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        pkg = pip_name or module.split(".")[0]
        raise MissingDependencyError(
            f"PuLID-Flux encoders need the Python package {pkg!r} (import {module!r} failed: {e}); "
            f"install it into ComfyUI's Python with: python -m pip install {pkg}"
        ) from e
