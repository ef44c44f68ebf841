"""EVA02-CLIP-L-14-336 vision tower (timm ``Eva``) with the PuLID hidden-state taps."""

from .checkpoint import build_eva_clip, official_to_timm_key
from .config import EVA02_CLIP_L_336, PULID_TAP_BLOCKS, EvaVisionConfig, check_pulid_tower
from .tower import EvaVisionTower

__all__ = ["EVA02_CLIP_L_336", "PULID_TAP_BLOCKS", "EvaVisionConfig", "EvaVisionTower", "build_eva_clip",
           "check_pulid_tower", "official_to_timm_key"]
