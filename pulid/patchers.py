"""Sub-model ModelPatchers of one PuLID model, so ComfyUI loads only what a step needs.

Sampling needs only the ID cross-attention modules (`pulid_ca`, 20 x 21 M parameters at full size);
encoding an identity needs only the IDFormer (`pulid_encoder`, 151 M). Handing ComfyUI one ModelPatcher
per part keeps the IDFormer off the GPU while sampling and the CAs off it while encoding, and the two
never move each other's weights (they cover disjoint parameters).

One patcher per (PuLID model, part, devices) is cached with a weak key on the PuLID module, so repeated
applies reuse it (ComfyUI then sees the same loaded model) and nothing outlives the PuLID model. The
patcher class is taken from the `pulid` argument (this package never imports ComfyUI); the legacy base
class `ModelPatcher` is used even if `pulid` is a subclass (e.g. a dynamic-VRAM patcher).
"""

from __future__ import annotations

import threading
import weakref

from torch import nn

_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_lock = threading.Lock()
PARTS = ("pulid_ca", "pulid_encoder")


def _legacy_class(patcher) -> type:
    for cls in type(patcher).__mro__:
        if cls.__name__ == "ModelPatcher":
            return cls
    return type(patcher)


def sub_patcher(pulid, part: str):
    """A ModelPatcher over `pulid.model.<part>` with `pulid`'s load/offload devices (cached)."""
    if part not in PARTS:
        raise ValueError(f"unknown PuLID part {part!r}; expected one of {PARTS}")
    model = getattr(pulid, "model", None)
    module = getattr(model, part, None)
    if not isinstance(module, nn.Module):
        raise ValueError(
            f"expected a ModelPatcher holding a PulidFluxModel (with .{part}), got {type(pulid).__name__} "
            f"holding {type(model).__name__}: connect the output of the PuLID-Flux model loader"
        )
    key = (part, str(pulid.load_device), str(pulid.offload_device))
    with _lock:
        per_model = _cache.setdefault(model, {})
        hit = per_model.get(key)
        if hit is None:
            hit = _legacy_class(pulid)(module, load_device=pulid.load_device, offload_device=pulid.offload_device)
            per_model[key] = hit
        return hit


def ca_patcher(pulid):
    """What sampling hands to ComfyUI: the cross-attention modules only."""
    return sub_patcher(pulid, "pulid_ca")


def encoder_patcher(pulid):
    """What encoding an identity needs: the IDFormer only (for the nodes' load_models_gpu)."""
    return sub_patcher(pulid, "pulid_encoder")
