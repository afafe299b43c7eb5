"""Face detection with YuNet (cv2.FaceDetectorYN): a box, 5 landmarks and a score per face."""

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .errors import EdgeError, ImageError

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DETECTOR = REPO.parent / "shared" / "models" / "yunet" / "face_detection_yunet_2023mar.onnx"

# Photos larger than this (longest side, px) are shrunk for detection only; landmarks are scaled back.
MAX_DETECT_SIDE = 1280


@dataclass(frozen=True)
class Face:
    box: np.ndarray  # x, y, w, h in photo pixels
    landmarks: np.ndarray  # 5x2: right eye, left eye, nose tip, right mouth corner, left mouth corner
    score: float

    @property
    def area(self) -> float:
        return float(self.box[2] * self.box[3])

    def describe(self) -> str:
        x, y, w, h = (int(round(v)) for v in self.box)
        return f"{w}x{h} at ({x},{y}), score {self.score:.2f}"


class Detector:
    """YuNet, loaded once; `detect` runs on photos of any size."""

    def __init__(self, model_path=DEFAULT_DETECTOR, score_threshold: float = 0.6, nms_threshold: float = 0.3):
        model_path = Path(model_path)
        if not model_path.is_file():
            raise EdgeError(f"face detector model not found: {model_path} (pass --detector PATH)")
        try:
            self._net = cv2.FaceDetectorYN.create(
                str(model_path), "", (320, 320), score_threshold, nms_threshold
            )
        except cv2.error as err:
            raise EdgeError(f"cannot load face detector {model_path}: {err}") from None

    def detect(self, bgr: np.ndarray) -> list[Face]:
        """All faces in a uint8 BGR photo, largest first."""
        h, w = bgr.shape[:2]
        scale = min(1.0, MAX_DETECT_SIDE / max(h, w))
        small = bgr if scale == 1.0 else cv2.resize(bgr, (round(w * scale), round(h * scale)), cv2.INTER_AREA)
        self._net.setInputSize((small.shape[1], small.shape[0]))
        _, rows = self._net.detect(small)
        if rows is None:
            return []
        faces = [Face(r[0:4] / scale, r[4:14].reshape(5, 2) / scale, float(r[14])) for r in rows]
        return sorted(faces, key=lambda f: -f.area)


def pick_face(faces: list[Face], name: str, largest: bool = False) -> Face:
    """The one face of a photo; no face or several faces (without `largest`) is an ImageError."""
    if not faces:
        raise ImageError(f"{name}: no face found (the photo needs one clear, roughly frontal face)")
    if len(faces) > 1 and not largest:
        found = "; ".join(f.describe() for f in faces[:5])
        raise ImageError(f"{name}: {len(faces)} faces found ({found}); pass --largest to use the largest one")
    return faces[0]
