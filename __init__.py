"""PuLID-Flux ID: PuLID-Flux identity customisation for Flux.1 in ComfyUI (V3 nodes)."""

__all__: list[str] = []
try:
    import comfy_api.latest  # noqa: F401  (ComfyUI with the V3 node API, >= 0.3.64)
except ImportError:
    pass
else:
    if __package__:
        from .nodes import comfy_entrypoint

        __all__ = ["comfy_entrypoint"]
