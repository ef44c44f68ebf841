"""PuLID-Flux for diffusers' FluxTransformer2DModel / FluxPipeline, through forward hooks (the pack's plain-torch
core; no ComfyUI import). Usage: README, section "diffusers"; diffusers_example/diffusers_pulid_flux.py."""

from .adapter import PulidFluxAdapter, attach, load_pulid_model
from .identity import encode_images, load_id, missing_model_files, save_id

__all__ = ["PulidFluxAdapter", "attach", "encode_images", "load_id", "load_pulid_model", "missing_model_files",
           "save_id"]
