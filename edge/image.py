"""Reading photos as uint8 BGR arrays (OpenCV's order) with clear errors.

A photo's size is read from its header before anything is decoded: a 50000x50000 PNG is a few hundred
bytes on disk and gigabytes once decoded, so photos over MAX_PIXELS are refused first (PNG, JPEG, BMP,
WebP, GIF; other formats are left to OpenCV's own limit, whose error is caught).
"""

import struct
from pathlib import Path

import cv2
import numpy as np

from .errors import ImageError

# 50 megapixels: a 12-48 MP phone photo passes; decoded it is at most 150 MB of BGR.
MAX_PIXELS = 50_000_000
# JPEG start-of-frame markers (baseline, progressive, lossless, ...; not DHT C4, JPG C8, DAC CC).
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the first start-of-frame segment, walking the marker segments."""
    i = 2
    while i + 9 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _JPEG_SOF:
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return width, height
        if marker == 0xD8 or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        i += 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if chunk == b"VP8L" and len(data) >= 25:
        bits = int.from_bytes(data[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if chunk == b"VP8 " and len(data) >= 30:
        w, h = struct.unpack("<HH", data[26:30])
        return w & 0x3FFF, h & 0x3FFF
    return None


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from an image file's first bytes, or None when the format is not known here."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data[:2] == b"\xff\xd8":
        return _jpeg_size(data)
    if data[:2] == b"BM" and len(data) >= 26:
        w, h = struct.unpack("<ii", data[18:26])
        return abs(w), abs(h)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_size(data)
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        return struct.unpack("<HH", data[6:10])
    return None


def check_pixels(path, data: bytes, max_pixels: int = MAX_PIXELS) -> None:
    """ImageError when the header says the photo has more than `max_pixels` pixels."""
    size = header_size(data[: 1 << 16])
    if size is not None and size[0] * size[1] > max_pixels:
        raise ImageError(
            f"{path}: {size[0]}x{size[1]} pixels is over the limit of {max_pixels:,}; "
            "send a smaller photo (the face needs only about 112x112)"
        )


def read_bgr(path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A photo as uint8 BGR HxWx3; grey and alpha images are converted. Too many pixels: ImageError."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    # imdecode over the raw bytes: works for any path name, and tells "not an image" apart.
    data = np.fromfile(path, dtype=np.uint8)
    check_pixels(path, data.tobytes()[: 1 << 16], max_pixels)
    try:
        image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    except cv2.error:  # e.g. over OpenCV's own pixel limit in a format not checked above
        image = None
    if image is None:
        raise ImageError(f"{path}: not a readable image (JPEG, PNG, BMP, WebP, TIFF ...)")
    if image.shape[0] * image.shape[1] > max_pixels:  # a format whose header is not read above
        h, w = image.shape[:2]
        raise ImageError(f"{path}: {w}x{h} pixels is over the limit of {max_pixels:,}")
    return image


def write_png(path, bgr: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", bgr)
    if not ok:
        raise ImageError(f"{path}: could not encode PNG")
    Path(path).write_bytes(buf.tobytes())
