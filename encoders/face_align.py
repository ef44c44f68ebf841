"""facexlib: 5-point FFHQ alignment to 512x512 and BiSeNet face parsing."""

from __future__ import annotations

import os
import warnings

import numpy as np
import torch

from .errors import ModelFilesError, require, shared
from .features import aligned_to_tensor

DETECTION_FILE = "detection_Resnet50_Final.pth"  # facexlib init_detection_model('retinaface_resnet50')
PARSING_FILE = "parsing_bisenet.pth"  # facexlib init_parsing_model('bisenet')
ALIGN_SIZE = 512  # official PuLIDPipeline.__init__: FaceRestoreHelper(face_size=512)
# FFHQ 5-point template for 512 px (facexlib FaceRestoreHelper.__init__): eyes, nose, mouth corners.
FFHQ_TEMPLATE_512 = np.array(
    [[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935], [201.26117, 371.41043],
     [313.08905, 371.15118]],
    np.float64,
)
ALIGN_BORDER_VALUE = (135, 133, 132)  # warpAffine borderValue in align_warp_face (gray, BGR)
FACEXLIB_DET_THRESHOLD = 0.97  # get_face_landmarks_5: detect_faces(img, 0.97)
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # parsing input normalisation (official get_id_embedding)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _check_files(folder: str, need_detector: bool) -> None:
    wanted = [PARSING_FILE] + ([DETECTION_FILE] if need_detector else [])
    missing = [f for f in wanted if not os.path.isfile(os.path.join(folder, f))]
    if missing:  # checked here: facexlib itself would download a missing file
        raise ModelFilesError(f"facexlib folder {folder!r} lacks {', '.join(missing)}")


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision 'pretrained' deprecation inside facexlib's RetinaFace
        return fn(*args, **kwargs)


class FaceAligner:
    """facexlib detector (lazy) + BiSeNet. Build with ``load_face_aligner``."""

    def __init__(self, folder: str, device: torch.device | str = "cpu"):
        self.folder, self.device, self._detector = folder, torch.device(device), None
        self.parser = _quiet(require("facexlib.parsing", "facexlib").init_parsing_model, "bisenet",
                             device=self.device, model_rootpath=folder)

    @property
    def detector(self):
        """facexlib RetinaFace-ResNet50, loaded on first use (only the ``facexlib`` alignment source needs it)."""
        if self._detector is None:
            _check_files(self.folder, need_detector=True)
            self._detector = _quiet(require("facexlib.detection", "facexlib").init_detection_model,
                                    "retinaface_resnet50", half=False, device=self.device, model_rootpath=self.folder)
        return self._detector

    def detect_landmarks(self, bgr: np.ndarray, boxes: np.ndarray | None = None, chosen: int = 0) -> np.ndarray | None:
        """5 landmarks (5, 2) in image pixels of one of facexlib's faces (confidence >= 0.97), or None."""
        with torch.no_grad():
            dets = np.asarray(self.detector.detect_faces(bgr, FACEXLIB_DET_THRESHOLD))  # (n, 15): box, score, 5 pts
        if dets.ndim != 2 or dets.shape[0] == 0:
            return None
        if boxes is None:
            from facexlib.utils.face_restoration_helper import get_center_face

            h, w = bgr.shape[:2]
            idx = get_center_face([d[0:5] for d in dets], h, w)[1]
        elif (idx := match_box(dets[:, :4], np.asarray(boxes, np.float64).reshape(-1, 4), chosen)) is None:
            return None
        return np.asarray(dets[idx, 5:15], np.float64).reshape(5, 2)

    @staticmethod
    def align(bgr: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """facexlib align_warp_face: similarity (LMEDS) onto the FFHQ template -> (512, 512, 3) BGR uint8."""
        cv2 = require("cv2", "opencv-python")
        lmk = np.asarray(landmarks, np.float64).reshape(5, 2)
        matrix = cv2.estimateAffinePartial2D(lmk, FFHQ_TEMPLATE_512, method=cv2.LMEDS)[0]
        if matrix is None or not np.isfinite(matrix).all():
            raise ValueError(f"cannot align a face from landmarks {lmk.round(1).tolist()}")
        return cv2.warpAffine(bgr, matrix, (ALIGN_SIZE, ALIGN_SIZE), borderMode=cv2.BORDER_CONSTANT,
                              borderValue=ALIGN_BORDER_VALUE)

    def parse(self, aligned_bgr: np.ndarray) -> torch.Tensor:
        """BiSeNet labels of the aligned face: (512, 512) int64 on the CPU (19 CelebAMask-HQ classes)."""
        x = aligned_to_tensor(aligned_bgr).to(self.device)  # (1, 3, 512, 512) in [0, 1]
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
        with torch.no_grad():
            logits = self.parser((x - mean) / std)[0]  # (1, 19, 512, 512) main head
        return logits.argmax(dim=1)[0].cpu()  # (512, 512)


def match_box(dets: np.ndarray, boxes: np.ndarray, chosen: int) -> int | None:
    """Index of the detection (rows x1 y1 x2 y2) of the face ``boxes[chosen]``: its centre inside that box and
    nearer the box's centre than to any other box's centre (the nearest such one); None when none is."""
    centres = (dets[:, :2] + dets[:, 2:4]) / 2  # (n, 2)
    box_centres = (boxes[:, :2] + boxes[:, 2:4]) / 2  # (m, 2)
    dist = np.linalg.norm(centres[:, None, :] - box_centres[None, :, :], axis=-1)  # (n, m)
    x1, y1, x2, y2 = boxes[chosen]
    inside = (centres[:, 0] >= x1) & (centres[:, 0] <= x2) & (centres[:, 1] >= y1) & (centres[:, 1] <= y2)
    ok = inside & (dist.argmin(axis=1) == chosen)
    return int(np.where(ok)[0][dist[ok, chosen].argmin()]) if ok.any() else None


def load_face_aligner(
    folder: str | os.PathLike, *, device: torch.device | str = "cpu", need_detector: bool = True
) -> FaceAligner:
    """facexlib models from ``folder`` (files checked first; nothing is downloaded)."""
    folder = os.path.abspath(os.fspath(folder))
    _check_files(folder, need_detector)
    aligner = shared(("facexlib", os.path.realpath(folder), str(torch.device(device))),
                     lambda: FaceAligner(folder, device))
    if need_detector:
        aligner.detector  # noqa: B018 - load now so that a broken file fails at load time, not mid-encode
    return aligner
