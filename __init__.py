"""PuLID-Flux ID for ComfyUI.

Inside ComfyUI this package exposes only `comfy_entrypoint` (V3 nodes). Outside ComfyUI (tests,
tools) it imports nothing heavy and exposes nothing, so `import` always succeeds.
"""

try:
    import comfy_api.latest  # noqa: F401  (present only when running inside ComfyUI)
except ImportError:
    __all__ = []
else:
    from .nodes import comfy_entrypoint

    __all__ = ["comfy_entrypoint"]
