"""EVA02-CLIP-L-14-336 vision tower (timm ``Eva``) with the PuLID hidden-state taps; see ``encoders/__init__``."""

from .checkpoint import (
    load_eva_clip,
    official_to_open_clip_key,
    official_to_timm_key,
    read_state_dict,
    save_eva_checkpoint,
    to_timm_state_dict,
)
from .config import EVA02_CLIP_L_336, PULID_TAP_BLOCKS, EvaVisionConfig, infer_config
from .tower import EvaVisionTower

__all__ = [
    "EVA02_CLIP_L_336",
    "PULID_TAP_BLOCKS",
    "EvaVisionConfig",
    "EvaVisionTower",
    "infer_config",
    "load_eva_clip",
    "official_to_open_clip_key",
    "official_to_timm_key",
    "read_state_dict",
    "save_eva_checkpoint",
    "to_timm_state_dict",
]
