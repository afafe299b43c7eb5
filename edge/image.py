"""Reading photos as uint8 BGR arrays (OpenCV's order) with clear errors."""

from pathlib import Path

import cv2
import numpy as np

from .errors import ImageError


def read_bgr(path) -> np.ndarray:
    """A photo as uint8 BGR HxWx3; grey and alpha images are converted."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    # imdecode over the raw bytes: works for any path name, and tells "not an image" apart.
    data = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise ImageError(f"{path}: not a readable image (JPEG, PNG, BMP, WebP, TIFF ...)")
    return image


def write_png(path, bgr: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", bgr)
    if not ok:
        raise ImageError(f"{path}: could not encode PNG")
    Path(path).write_bytes(buf.tobytes())
