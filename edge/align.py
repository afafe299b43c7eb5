"""Similarity alignment of a face to the standard 112x112 ArcFace 5-point template."""

import cv2
import numpy as np

from .errors import ImageError

SIZE = 112
# Right eye, left eye, nose tip, right mouth corner, left mouth corner (image left to right: the
# person's right eye comes first), in 112x112 pixels — the template of ../shared/data.
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)


def estimate_transform(landmarks: np.ndarray) -> np.ndarray:
    """2x3 similarity transform (rotation, uniform scale, translation) from landmarks to the template."""
    matrix, _ = cv2.estimateAffinePartial2D(
        np.asarray(landmarks, np.float32).reshape(5, 2), ARCFACE_TEMPLATE, method=cv2.LMEDS
    )
    if matrix is None:
        raise ImageError("cannot align the face: degenerate landmarks")
    return matrix


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, np.float64).reshape(-1, 2)
    return points @ matrix[:, :2].T + matrix[:, 2]


def align(bgr: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 112x112 aligned crop (same channel order as the input) and the transform used."""
    matrix = estimate_transform(landmarks)
    crop = cv2.warpAffine(bgr, matrix, (SIZE, SIZE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    return crop, matrix


def check_aligned(bgr: np.ndarray, name: str) -> np.ndarray:
    """An input given as already aligned must be a 112x112 crop."""
    if bgr.shape[:2] != (SIZE, SIZE):
        h, w = bgr.shape[:2]
        raise ImageError(f"{name}: --aligned needs a {SIZE}x{SIZE} aligned face crop, this image is {w}x{h}")
    return bgr
