"""Reading face crops as uint8 RGB arrays."""

from pathlib import Path

import numpy as np

from .paths import DataError

FACE_SIZE = 112


def read_rgb(path, size: int | None = FACE_SIZE) -> np.ndarray:
    """A face image as uint8 RGB HxWx3; DataError when it is unreadable or (with `size`) not size x size."""
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise DataError(f"cannot read image {path}")
    if size and bgr.shape[:2] != (size, size):
        raise DataError(f"{path} is {bgr.shape[1]}x{bgr.shape[0]}; faces must be aligned {size}x{size} crops")
    return np.ascontiguousarray(bgr[:, :, ::-1])


def read_faces(paths) -> np.ndarray:
    """Aligned 112x112 faces as uint8 RGB NHWC (an empty [0, 112, 112, 3] for no paths)."""
    paths = [Path(p) for p in paths]
    if not paths:
        return np.zeros((0, FACE_SIZE, FACE_SIZE, 3), np.uint8)
    return np.stack([read_rgb(p) for p in paths])
