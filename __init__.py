"""PuLID-Flux ID: PuLID-Flux identity customisation for Flux.1 in ComfyUI (V3 nodes).

Inside ComfyUI this module exposes ``comfy_entrypoint`` only: a module that also defined
NODE_CLASS_MAPPINGS would be loaded as V1 and its entrypoint never called. Without ComfyUI (plain
``import`` in tests or tools) it exposes nothing and imports nothing heavy.
"""

try:
    import comfy_api.latest  # noqa: F401  (ComfyUI with the V3 node API, >= 0.3.64)
except ImportError:
    __all__: list[str] = []
else:
    from .nodes import comfy_entrypoint

    __all__ = ["comfy_entrypoint"]
