"""Photo -> aligned face -> protected tensor, with per-stage timings. No network here."""

import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .align import SIZE, align, check_aligned
from .detect import Detector, Face, find_detector, pick_face
from .frontend import FrontEnd
from .image import MAX_PIXELS, read_bgr


@dataclass
class Protected:
    path: Path
    face_bgr: np.ndarray  # the aligned 112x112 crop (never leaves the device)
    tensor: np.ndarray | None  # [1, C, H, W], what the server receives (None until protected)
    face: Face | None = None  # the detection used (None with --aligned)
    timings_ms: dict = field(default_factory=dict)
    faces_found: int = 0  # faces the detector found (0 with --aligned)
    warning: str | None = None  # e.g. several faces found, the most prominent one used


class Pipeline:
    """Holds the loaded models (detector, front-end session) for every photo of a run (docs/edge.md).

    pipeline = Pipeline("artifacts/dlib_ppfr_fd")
    done = pipeline.run("photo.jpg")       # Protected: .tensor [1, C, H, W], .face, .timings_ms
    """

    def __init__(
        self,
        bundle_dir,
        aligned: bool = False,
        strict: bool = False,
        detector=None,
        score_threshold: float = 0.6,
        max_pixels: int = MAX_PIXELS,
    ):
        """`strict`: a photo with several faces is an ImageError instead of using the most prominent.
        `detector`: a YuNet ONNX file (default: the bundle's detector.onnx, see detect.find_detector).
        `max_pixels`: larger photos are refused from their header, before decoding."""
        self.frontend = FrontEnd(bundle_dir)
        self.aligned = aligned
        self.strict = strict
        self.max_pixels = max_pixels
        self.detector = (
            None
            if aligned
            else Detector(find_detector(bundle_dir, self.frontend.manifest, detector), score_threshold)
        )
        self._warm_up()

    def _warm_up(self) -> None:
        """One throwaway pass so per-image timings show steady-state cost, not one-off session setup."""
        blank = np.zeros((SIZE, SIZE, 3), np.uint8)
        if self.detector is not None:
            self.detector.detect(blank)
        self.frontend.protect(blank)

    def run(self, path) -> Protected:
        """Read, detect + align (or check an aligned crop), protect."""
        done = self.prepare(path)
        t0 = time.perf_counter()
        done.tensor = self.frontend.protect(cv2.cvtColor(done.face_bgr, cv2.COLOR_BGR2RGB))
        done.timings_ms["protect"] = _ms(t0, time.perf_counter())
        return done

    def prepare(self, path) -> Protected:
        """Read and detect + align (or check an aligned crop), without protecting: `tensor` is None.
        Lets a caller protect the same aligned face many times, each with fresh random inputs."""
        path = Path(path)
        clock = time.perf_counter
        t0 = clock()
        bgr = read_bgr(path, self.max_pixels)
        t1 = clock()
        if self.aligned:
            crop = check_aligned(bgr, str(path))
            return Protected(path, crop, None, timings_ms={"read": _ms(t0, t1)})
        faces = self.detector.detect(bgr)
        face, warning = pick_face(faces, str(path), self.strict)
        t2 = clock()
        crop, _ = align(bgr, face.landmarks)
        timings = {"read": _ms(t0, t1), "detect": _ms(t1, t2), "align": _ms(t2, clock())}
        return Protected(path, crop, None, face, timings, len(faces), warning)


def _ms(start: float, end: float) -> float:
    return round((end - start) * 1000, 3)
