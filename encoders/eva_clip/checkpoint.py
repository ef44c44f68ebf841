"""Loading EVA02-CLIP vision weights: official eva_clip ``.pt``, open_clip safetensors, or bare timm keys.

Layouts (spec §b.4, "State-dict key mapping"):
* official ``EVA02_CLIP_L_336_psz14_s6B.pt``: ``visual.<eva_clip key>`` (fp16) + ``text.*`` + ``logit_scale``;
* open_clip (``EVA02-L-14-336``): ``visual.trunk.<timm key>`` + text-tower keys;
* bare: ``<timm key>`` (or bare eva_clip names).
Everything outside the vision tower is dropped, the RoPE buffers (recomputed, as the official loader
does) too; every other key is renamed to timm's names and must match the tower exactly.
"""

from __future__ import annotations

import logging
import os
import re

import torch

from ..errors import EvaCheckpointError, ModelFilesError
from .config import METADATA_KEY, EvaVisionConfig, infer_config
from .tower import EvaVisionTower

log = logging.getLogger(__name__)

OFFICIAL_FILE = "EVA02_CLIP_L_336_psz14_s6B.pt"
WHERE_TO_GET = (
    f"download {OFFICIAL_FILE} from https://huggingface.co/QuanSun/EVA-CLIP (the file the official PuLID uses), "
    "or open_clip's EVA02-L-14-336 (timm/eva02_large_patch14_clip_336.merged2b_s6b_b61k) safetensors"
)
# eva_clip name <-> timm name inside a block (timm eva.py checkpoint_filter_fn). A name that does not end
# in "." is a whole-key suffix; one that does is a module path segment.
_NAME_PAIRS = (
    (".attn.q_bias", ".attn.q_proj.bias"),
    (".attn.v_bias", ".attn.v_proj.bias"),
    (".attn.inner_attn_ln.", ".attn.norm."),
    (".mlp.w1.", ".mlp.fc1_g."),
    (".mlp.w2.", ".mlp.fc1_x."),
    (".mlp.ffn_ln.", ".mlp.norm."),
    (".mlp.w3.", ".mlp.fc2."),
)


def _substitutions(pairs) -> tuple:
    return tuple((re.compile(re.escape(a) + ("" if a.endswith(".") else "$")), b) for a, b in pairs)


_RENAMES = _substitutions(_NAME_PAIRS)
_INVERSE = _substitutions((b, a) for a, b in _NAME_PAIRS)
_ROPE = re.compile(r"(^|\.)rope\.freqs_(cos|sin)$")
# Recognisable foreign layouts -> what the file probably is.
_FOREIGN = (
    ("vision_model.encoder.layers.", "a HuggingFace CLIPVisionModel (ComfyUI clip_vision, e.g. CLIP-ViT-L/H)"),
    ("visual.transformer.resblocks.", "an OpenAI / open_clip ViT CLIP (not EVA02)"),
    ("pulid_encoder.", "a PuLID checkpoint (load it with the PuLID loader)"),
    ("double_blocks.", "a Flux diffusion model"),
    ("blocks.0.attn.qkv.weight", "an EVA01 / fused-qkv ViT (PuLID needs EVA02-CLIP with separate q/k/v)"),
)


def official_to_timm_key(key: str) -> str | None:
    """Map one official eva_clip key (``visual.`` prefix optional) to timm's name; None = dropped (RoPE)."""
    k = key[len("visual.") :] if key.startswith("visual.") else key
    if _ROPE.search(k):
        return None
    for pat, rep in _RENAMES:
        k = pat.sub(rep, k)
    return k


def official_to_open_clip_key(key: str) -> str | None:
    """``visual.<eva_clip key>`` -> ``visual.trunk.<timm key>`` (None = dropped), as open_clip stores it."""
    k = official_to_timm_key(key)
    return None if k is None else "visual.trunk." + k


def timm_to_official_key(key: str) -> str:
    """Inverse of ``official_to_timm_key`` without the prefix (``blocks.0.mlp.fc1_g.weight`` -> ``...w1...``)."""
    for pat, rep in _INVERSE:
        key = pat.sub(rep, key)
    return key


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and safetensors metadata of ``path`` (pickles only with ``weights_only=True``)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        folder, name = os.path.split(os.path.abspath(path))
        raise ModelFilesError(f"EVA-CLIP checkpoint {name!r} not found in folder {folder!r}; {WHERE_TO_GET}")
    if os.path.getsize(path) == 0:
        raise EvaCheckpointError(f"EVA-CLIP checkpoint {path!r} is empty (0 bytes): download it again")
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(path, framework="pt", device="cpu") as f:
                meta = dict(f.metadata() or {})
                sd = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError) as e:
            raise EvaCheckpointError(f"EVA-CLIP checkpoint {path!r} is not a readable safetensors file: {e}") from e
        return sd, meta
    try:
        try:  # mmap: the fp16 file is paged in tensor by tensor instead of read whole (zip format only)
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types (UnpicklingError, RuntimeError, EOFError)
        raise EvaCheckpointError(
            f"EVA-CLIP checkpoint {path!r} could not be read as a weights-only torch file "
            f"({type(e).__name__}: {str(e)[:200]}); it may be truncated or not a checkpoint"
        ) from e
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise EvaCheckpointError(f"EVA-CLIP checkpoint {path!r} does not hold a state dict of tensors")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in obj.items()}, {}


def _describe_foreign(keys) -> str:
    for marker, what in _FOREIGN:
        if any(k.startswith(marker) or k.endswith(marker) for k in keys):
            return what
    return "not an EVA02-CLIP checkpoint"


def to_timm_state_dict(sd: dict[str, torch.Tensor], source: str = "<state dict>") -> dict[str, torch.Tensor]:
    """Vision-tower tensors of any supported layout, under timm's key names (text tower and RoPE dropped)."""
    keys = list(sd)
    if any(k.startswith("visual.trunk.") for k in keys):
        prefix, layout = "visual.trunk.", "open_clip"
    elif "visual.patch_embed.proj.weight" in sd:
        prefix, layout = "visual.", "official eva_clip"
    elif "patch_embed.proj.weight" in sd:
        prefix, layout = "", "bare"
    else:
        sample = ", ".join(sorted(keys)[:4])
        raise EvaCheckpointError(
            f"{source!r} is {_describe_foreign(keys)}: no EVA02-CLIP vision keys "
            f"(expected 'visual.patch_embed.proj.weight' (official {OFFICIAL_FILE}) or 'visual.trunk.patch_embed.proj.weight' "
            f"(open_clip)); found e.g. {sample}. {WHERE_TO_GET}"
        )
    out, dropped = {}, 0
    for k, v in sd.items():
        if not k.startswith(prefix):
            dropped += 1  # text tower, logit_scale, ...
            continue
        new = official_to_timm_key(k[len(prefix) :])
        if new is None:
            dropped += 1
            continue
        out[new] = v
    if "blocks.0.attn.q_proj.weight" not in out or "blocks.0.mlp.fc1_g.weight" not in out:
        raise EvaCheckpointError(
            f"{source!r} has a vision tower but {_describe_foreign(out)}: block 0 lacks attn.q_proj / SwiGLU mlp.w1 "
            "weights. PuLID-Flux needs EVA02-CLIP-L-14-336. " + WHERE_TO_GET
        )
    log.debug("EVA-CLIP %s: %s layout, %d vision tensors, %d other keys dropped", source, layout, len(out), dropped)
    return out


def _check_keys(tower: EvaVisionTower, sd: dict[str, torch.Tensor], source: str) -> None:
    want = {k: v.shape for k, v in tower.trunk.state_dict().items()}
    missing = sorted(set(want) - set(sd))
    unexpected = sorted(set(sd) - set(want))
    bad = sorted(k for k in set(want) & set(sd) if tuple(sd[k].shape) != tuple(want[k]))
    if missing or unexpected or bad:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing vision keys (e.g. {missing[:8]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected vision keys (e.g. {unexpected[:8]})")
        if bad:
            parts.append(
                "mis-shaped: " + ", ".join(f"{k} {tuple(sd[k].shape)} != {tuple(want[k])}" for k in bad[:5])
            )
        raise EvaCheckpointError(f"EVA-CLIP checkpoint {source!r} does not match the tower: " + "; ".join(parts))


def load_eva_clip(
    path: str | os.PathLike,
    *,
    device: torch.device | str | None = "cpu",
    dtype: torch.dtype = torch.float32,
    config: EvaVisionConfig | None = None,
    expected: EvaVisionConfig | None = None,
) -> EvaVisionTower:
    """Build the tower from a checkpoint file (layout auto-detected, config inferred from shapes).

    ``config`` forces a config (e.g. heads of a tiny tower saved as a .pt); otherwise it is inferred from
    the shapes plus the safetensors metadata key ``eva_vision_config``. ``expected`` (e.g. ``EVA02_CLIP_L_336``)
    rejects any other model size with a clear message.
    """
    source = os.fspath(path)
    raw, meta = read_state_dict(source)
    sd = to_timm_state_dict(raw, source)
    del raw
    if config is None:
        try:
            config = infer_config(sd, meta)
        except (KeyError, ValueError) as e:
            raise EvaCheckpointError(f"EVA-CLIP checkpoint {source!r}: cannot infer the tower size ({e})") from e
    if expected is not None:
        fields = ("image_size", "patch_size", "width", "depth", "mlp_hidden", "embed_dim")
        diff = {f: (getattr(config, f), getattr(expected, f)) for f in fields if getattr(config, f) != getattr(expected, f)}
        if diff:
            txt = ", ".join(f"{f} {got} (needs {want})" for f, (got, want) in diff.items())
            raise EvaCheckpointError(
                f"EVA-CLIP checkpoint {source!r} is another model: {txt}. PuLID-Flux needs EVA02-CLIP-L-14-336; "
                + WHERE_TO_GET
            )
    tower = EvaVisionTower.empty(config)
    _check_keys(tower, sd, source)
    for k in list(sd):  # one tensor at a time: the source copy is freed as soon as it is converted
        sd[k] = sd.pop(k).to(dtype=dtype, copy=True).contiguous()
    tower.trunk.load_state_dict(sd, strict=True, assign=True)
    del sd
    tower.to(device=device, dtype=dtype)
    tower.requires_grad_(False)
    log.info("EVA-CLIP loaded from %s (%s, width %d, %d blocks, %d px)", source, dtype, config.width, config.depth, config.image_size)
    return tower


def save_eva_checkpoint(
    tower: EvaVisionTower, path: str | os.PathLike, *, layout: str = "official", dtype: torch.dtype = torch.float16
) -> None:
    """Write ``tower``'s weights in a real file layout (used by tests and converters).

    ``official``: ``visual.<eva_clip key>`` in a torch ``.pt`` (as EVA02_CLIP_L_336_psz14_s6B.pt);
    ``open_clip``: ``visual.trunk.<timm key>`` safetensors; ``timm``: bare keys safetensors. Safetensors
    files carry the config in their metadata.
    """
    sd = {k: v.detach().to("cpu", dtype=dtype).contiguous() for k, v in tower.trunk.state_dict().items()}
    path = os.fspath(path)
    if layout == "official":
        out = {"visual." + timm_to_official_key(k): v for k, v in sd.items()}
        torch.save(out, path)
    elif layout in ("open_clip", "timm"):
        from safetensors.torch import save_file

        prefix = "visual.trunk." if layout == "open_clip" else ""
        save_file({prefix + k: v for k, v in sd.items()}, path, metadata={METADATA_KEY: tower.config.to_json()})
    else:
        raise ValueError(f"layout {layout!r}: use 'official', 'open_clip' or 'timm'")
