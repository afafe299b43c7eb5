"""A PNG of what the server receives: the aligned face (stays on the device) beside every channel of the
protected tensor, each channel contrast-stretched on its own (1st..99th percentile) so any structure
it carries is visible whatever its magnitude."""

import math

import cv2
import numpy as np

TILE = 64  # target tile side in px; small channels are enlarged by an integer factor (nearest)
GAP = 2
BACKGROUND = 255


def channel_grid(tensor: np.ndarray) -> np.ndarray:
    """[1, C, H, W] (or [C, H, W]) -> uint8 grey grid of the C channels."""
    x = np.asarray(tensor, np.float32).reshape(-1, *tensor.shape[-2:])
    c, h, w = x.shape
    lo, hi = np.percentile(x, [1, 99], axis=(1, 2), keepdims=True)
    scaled = (np.clip((x - lo) / np.maximum(hi - lo, 1e-12), 0, 1) * 255).round().astype(np.uint8)
    zoom = max(1, TILE // max(h, w))
    tiles = scaled.repeat(zoom, axis=1).repeat(zoom, axis=2)
    cols = math.ceil(math.sqrt(c))
    rows = math.ceil(c / cols)
    th, tw = h * zoom + GAP, w * zoom + GAP
    padded = np.full((rows * cols, th, tw), BACKGROUND, np.uint8)
    padded[:c, :-GAP, :-GAP] = tiles
    return padded.reshape(rows, cols, th, tw).transpose(0, 2, 1, 3).reshape(rows * th, cols * tw)


def _caption(image: np.ndarray, lines: list[str]) -> np.ndarray:
    """Text lines above an image, the font shrunk to fit its width."""
    font, thickness = cv2.FONT_HERSHEY_SIMPLEX, 1
    widest = max(cv2.getTextSize(t, font, 1.0, thickness)[0][0] for t in lines)
    scale = min(0.42, (image.shape[1] - 6) / max(widest, 1))
    bar = np.full((8 + 16 * len(lines), image.shape[1], 3), BACKGROUND, np.uint8)
    for i, text in enumerate(lines):
        cv2.putText(bar, text, (3, 15 + 16 * i), font, scale, (0, 0, 0), thickness, cv2.LINE_AA)
    return np.vstack([bar, image])


def _pad_to(image: np.ndarray, height: int) -> np.ndarray:
    fill = np.full((height - image.shape[0], image.shape[1], 3), BACKGROUND, np.uint8)
    return np.vstack([image, fill])


def preview(face_bgr: np.ndarray, tensor: np.ndarray, method: str = "") -> np.ndarray:
    """uint8 BGR image: the aligned face on the left, the protected channels on the right."""
    grid = cv2.cvtColor(channel_grid(tensor), cv2.COLOR_GRAY2BGR)
    c, h, w = tensor.shape[-3:]
    left = _caption(face_bgr, ["on device", "(never sent)"])
    right = _caption(
        grid,
        [
            f"sent to server: {method} {c}x{h}x{w} {tensor.dtype}, {tensor.nbytes:,} B",
            "one tile per channel, each scaled to its 1-99th percentile",
        ],
    )
    height = max(left.shape[0], right.shape[0])
    gap = np.full((height, 8, 3), BACKGROUND, np.uint8)
    return np.hstack([_pad_to(left, height), gap, _pad_to(right, height)])
