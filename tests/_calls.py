"""Call logs for the role / step tests: which conditioning each latent row of every model call holds, the step
the call belongs to, and which ID entry each Apply gave the row (read from the plans the call really used).

Each conditioning carries its own Flux guidance value, so a row names its conditioning whatever the batching.
"""

from __future__ import annotations

import _tiny_flux as T
import torch

GUIDANCE = {"positive": 3.0, "middle": 2.0, "negative": 1.0, "empty": 0.5}
NAMES = {g: name for name, g in GUIDANCE.items()}
UNCOND_ROLE = {"negative", "empty"}  # the rule of pulid/plan.py, restated for the tests
CONDS = {name: T.tiny_cond(seed, tokens=tokens, guidance=GUIDANCE[name])
         for seed, (name, tokens) in enumerate((("positive", 7), ("negative", 5), ("middle", 6), ("empty", 4)))}


def apply_keys(model) -> list[str]:
    """The plan keys of the Applies on `model`, first Apply first."""
    dit = model.model_options["transformer_options"].get("patches_replace", {}).get("dit", {})
    keys, patch = [], dit.get(("double_block", 0))
    while patch is not None and hasattr(patch, "applied"):
        keys.insert(0, patch.applied.key)
        patch = patch.inner
    return keys


def probed(model, log: list):
    """A clone whose every diffusion-model call appends {"step", "sigma", "rows", "ids": {key: [entry per row]}}
    (entry: 0 the cond ID, 1 the uncond ID, None no ID)."""
    from comfy.patcher_extension import WrappersMP

    from comfyui_pulid_flux.integration.cfg import CALL_KEY

    keys = apply_keys(model)

    def probe(executor, *args, **kwargs):
        to = args[7]
        call = to.get(CALL_KEY)
        rows = [NAMES[g] for g in args[4].tolist()]
        ids = {}
        for key in keys:
            plan = to[key]
            on = (plan.gate.flatten(1).abs().amax(1) > 0).tolist()
            sel = plan.select.tolist() if plan.select is not None else [0] * len(rows)
            ids[key] = [s if o else None for s, o in zip(sel, on)]
        log.append({"step": None if call is None else call.step, "sigma": float(args[1].max()), "rows": rows,
                    "ids": ids})
        return executor(*args, **kwargs)

    m = model.clone()
    m.add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, "test_calls", probe)
    return m


def expected_entry(name: str, uncond_mode: str = "uncond_id"):
    if name not in UNCOND_ROLE:
        return 0
    return {"uncond_id": 1, "same": 0, "none": None}[uncond_mode]


def rows_per_step(log: list) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for call in log:
        out.setdefault(call["step"], []).extend(call["rows"])
    return {s: sorted(r) for s, r in out.items()}


def latent(batch: int = 1, size: int = 32, seed: int = 0):
    lat = torch.zeros(batch, 16, size // 8, size // 8)
    return lat, torch.randn(lat.shape, generator=torch.Generator().manual_seed(seed))
