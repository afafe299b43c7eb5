"""Photo -> aligned face -> protected tensor, with per-stage timings. No network here."""

import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .align import SIZE, align, check_aligned
from .detect import DEFAULT_DETECTOR, Detector, Face, pick_face
from .frontend import FrontEnd
from .image import read_bgr


@dataclass
class Protected:
    path: Path
    face_bgr: np.ndarray  # the aligned 112x112 crop (never leaves the device)
    tensor: np.ndarray  # [1, C, H, W], what the server receives
    face: Face | None = None  # the detection used (None with --aligned)
    timings_ms: dict = field(default_factory=dict)


class Pipeline:
    """Holds the loaded models (detector, front-end session) for every photo of a run."""

    def __init__(
        self,
        bundle_dir,
        aligned: bool = False,
        largest: bool = False,
        detector=DEFAULT_DETECTOR,
        score_threshold: float = 0.6,
    ):
        self.frontend = FrontEnd(bundle_dir)
        self.aligned = aligned
        self.largest = largest
        self.detector = None if aligned else Detector(detector, score_threshold)
        self._warm_up()

    def _warm_up(self) -> None:
        """One throwaway pass so per-image timings show steady-state cost, not one-off session setup."""
        blank = np.zeros((SIZE, SIZE, 3), np.uint8)
        if self.detector is not None:
            self.detector.detect(blank)
        self.frontend.protect(blank)

    def run(self, path) -> Protected:
        path = Path(path)
        clock = time.perf_counter
        t0 = clock()
        bgr = read_bgr(path)
        t1 = clock()
        face = None
        if self.aligned:
            crop = check_aligned(bgr, str(path))
            timings = {"read": _ms(t0, t1)}
            t3 = clock()
        else:
            face = pick_face(self.detector.detect(bgr), str(path), self.largest)
            t2 = clock()
            crop, _ = align(bgr, face.landmarks)
            t3 = clock()
            timings = {"read": _ms(t0, t1), "detect": _ms(t1, t2), "align": _ms(t2, t3)}
        tensor = self.frontend.protect(cv2.cvtColor(crop, cv2.COLOR_BGR2RGB))
        timings["protect"] = _ms(t3, clock())
        return Protected(path, crop, tensor, face, timings)


def _ms(start: float, end: float) -> float:
    return round((end - start) * 1000, 3)
