"""PuLID-Flux core in plain torch: the model, its checkpoint layout, and the patch applied to Flux.

ComfyUI objects enter only as arguments (see patch.py); this package never imports ComfyUI.
"""
