"""PuLID-Flux ID: PuLID-Flux identity customisation for Flux.1 in ComfyUI (V3 nodes).

Inside ComfyUI this module exposes ``comfy_entrypoint`` only: a module that also defined
NODE_CLASS_MAPPINGS would be loaded as V1 and its entrypoint never called. Without ComfyUI (plain
``import`` in tests or tools, or this file imported on its own, as pytest does) it exposes nothing.
"""

__all__: list[str] = []
try:
    import comfy_api.latest  # noqa: F401  (ComfyUI with the V3 node API, >= 0.3.64)
except ImportError:
    pass
else:
    if __package__:
        from .nodes import comfy_entrypoint

        __all__ = ["comfy_entrypoint"]
