"""Face detection with YuNet (cv2.FaceDetectorYN): a box, 5 landmarks and a score per face."""

import hashlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from ppfr.data import model_path

from .errors import EdgeError, ImageError

# The detector travels in the bundle (ppfr-export copies it there, its sha256 in the manifest); without
# one there: $PPFR_DATA/models/... for an installed edge (ppfr.data), ../shared/models/... in a checkout.
BUNDLE_DETECTOR = "detector.onnx"
DEFAULT_DETECTOR = model_path("yunet", "face_detection_yunet_2023mar.onnx")

# Photos larger than this (longest side, px) are shrunk for detection only; landmarks are scaled back.
MAX_DETECT_SIDE = 1280


@dataclass(frozen=True)
class Face:
    box: np.ndarray  # x, y, w, h in photo pixels
    landmarks: np.ndarray  # 5x2: right eye, left eye, nose tip, right mouth corner, left mouth corner
    score: float
    prominence: float = 0.0  # area x score x nearness to the photo's centre (see `prominence`)

    @property
    def area(self) -> float:
        return float(self.box[2] * self.box[3])

    def describe(self) -> str:
        x, y, w, h = (int(round(v)) for v in self.box)
        return f"{w}x{h} at ({x},{y}), score {self.score:.2f}"


def prominence(box, score: float, width: int, height: int) -> float:
    """How much a face is *the* subject of a photo: size x detection score x nearness to the centre.

        prominence = (w * h) * score * (1 - d)
        d = |box centre - photo centre| / |photo corner - photo centre|   (0 at the centre, 1 at a corner)

    The person at a door terminal or holding a phone fills the frame and stands in the middle; the faces
    that also get detected are passers-by, people in the background, posters: smaller, off-centre, and
    often blurred (lower score). Area (not side length) makes size dominate, as it should: a face with
    twice the side of another wins unless it sits far off-centre (d > 3/4 of the way to a corner, where
    1 - d < 1/4). The distance is normalised per axis so that it means the same in portrait and
    landscape photos. On the 1,583 raw LFW originals of View-2 folds 1-2 (280 show several faces) this
    picks the same face as the data set's recorded choice (the face nearest the centre) in every photo;
    the largest face alone picks a wrong one in 8.
    """
    x, y, w, h = (float(v) for v in box[:4])
    dx = (x + w / 2 - width / 2) / (width / 2)
    dy = (y + h / 2 - height / 2) / (height / 2)
    d = min(1.0, float(np.hypot(dx, dy)) / np.sqrt(2.0))
    return max(0.0, w) * max(0.0, h) * float(score) * (1.0 - d)


def find_detector(bundle_dir, manifest, given=None) -> Path:
    """The YuNet model to use: `given` (--detector), else the bundle's own copy (checked against the
    sha256 its manifest records), else DEFAULT_DETECTOR (bundles exported before the detector travelled)."""
    if given:
        return Path(given)
    if manifest.HasField("detector"):
        path = Path(bundle_dir) / manifest.detector.path
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != manifest.detector.sha256:
            raise EdgeError(
                f"{path}: missing or not the detector the manifest records (export the bundle again)"
            )
        return path
    in_bundle = Path(bundle_dir) / BUNDLE_DETECTOR
    return in_bundle if in_bundle.is_file() else DEFAULT_DETECTOR


class Detector:
    """YuNet, loaded once; `detect` runs on photos of any size."""

    def __init__(self, model_path=DEFAULT_DETECTOR, score_threshold: float = 0.6, nms_threshold: float = 0.3):
        model_path = Path(model_path)
        if not model_path.is_file():
            raise EdgeError(
                f"face detector model not found: {model_path} (export the bundle again: it carries "
                f"{BUNDLE_DETECTOR}; or pass --detector PATH)"
            )
        try:
            self._net = cv2.FaceDetectorYN.create(
                str(model_path), "", (320, 320), score_threshold, nms_threshold
            )
        except cv2.error as err:
            raise EdgeError(f"cannot load face detector {model_path}: {err}") from None

    def detect(self, bgr: np.ndarray) -> list[Face]:
        """All faces in a uint8 BGR photo, the most prominent first (see `prominence`)."""
        h, w = bgr.shape[:2]
        scale = min(1.0, MAX_DETECT_SIDE / max(h, w))
        small = bgr if scale == 1.0 else cv2.resize(bgr, (round(w * scale), round(h * scale)), cv2.INTER_AREA)
        self._net.setInputSize((small.shape[1], small.shape[0]))
        _, rows = self._net.detect(small)
        if rows is None:
            return []
        faces = []
        for r in rows:
            box, score = r[0:4] / scale, float(r[14])
            faces.append(Face(box, r[4:14].reshape(5, 2) / scale, score, prominence(box, score, w, h)))
        return sorted(faces, key=lambda f: -f.prominence)


def pick_face(faces: list[Face], name: str, strict: bool = False) -> tuple[Face, str | None]:
    """The face to use from `faces` (most prominent first, as `Detector.detect` returns them) and a
    warning when there were several. No face is an ImageError; so are several faces with `strict`."""
    if not faces:
        raise ImageError(f"{name}: no face found (the photo needs one clear, roughly frontal face)")
    if len(faces) == 1:
        return faces[0], None
    found = "; ".join(f.describe() for f in faces[:5]) + ("; ..." if len(faces) > 5 else "")
    if strict:
        raise ImageError(
            f"{name}: {len(faces)} faces found ({found}); --strict refuses photos with several faces "
            "(without --strict the most prominent face is used)"
        )
    others = "; ".join(f.describe() for f in faces[1:5]) + ("; ..." if len(faces) > 5 else "")
    warning = (
        f"{name}: {len(faces)} faces found, using the most prominent one ({faces[0].describe()}; "
        f"others: {others}); pass --strict to refuse such photos"
    )
    return faces[0], warning
