"""Reference images -> the inputs of the PuLID ID encoder: insightface (detection + ArcFace), facexlib
(alignment + BiSeNet parsing) and the EVA02-CLIP vision tower, in the official order."""

from .errors import EvaCheckpointError, FaceNotFoundError, ImageInputError, MissingDependencyError, ModelFilesError
from .eva_clip import EVA02_CLIP_L_336, EvaVisionConfig, EvaVisionTower, build_eva_clip, check_pulid_tower
from .face_align import FaceAligner, load_face_aligner
from .face_analysis import FACE_RULES, DetectedFace, FaceAnalyzer, choose_face, load_face_analyzer
from .features import BG_LABELS, assemble_id_cond, bg_mask, eva_input, face_features_image
from .identity import ALIGN_SOURCES, FaceInfo, IdentityResult, encode_identity
from .image import prepare_images

__all__ = [
    "ALIGN_SOURCES", "BG_LABELS", "EVA02_CLIP_L_336", "FACE_RULES", "DetectedFace", "EvaCheckpointError",
    "EvaVisionConfig", "EvaVisionTower", "FaceAligner", "FaceAnalyzer", "FaceInfo", "FaceNotFoundError",
    "IdentityResult", "ImageInputError", "MissingDependencyError", "ModelFilesError", "assemble_id_cond", "bg_mask",
    "build_eva_clip", "check_pulid_tower", "choose_face", "encode_identity", "eva_input", "face_features_image",
    "load_face_aligner", "load_face_analyzer", "prepare_images",
]
