"""PuLID-Flux core: pure torch. ComfyUI objects enter only as arguments (see patch.py)."""

from .attention import PerceiverAttentionCA
from .checkpoint import load_pulid_file, read_state_dict, save_pulid_file
from .config import FLUX_DEV, CALayout, PulidFluxConfig, ca_layout
from .embedding import IDEmbedding
from .encoder import IDFormer
from .model import PulidCheckpointError, PulidFluxModel

__all__ = [
    "FLUX_DEV", "CALayout", "IDEmbedding", "IDFormer", "PerceiverAttentionCA", "PulidCheckpointError",
    "PulidFluxConfig", "PulidFluxModel", "ca_layout", "load_pulid_file", "read_state_dict", "save_pulid_file",
]
