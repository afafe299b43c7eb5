"""ppfr-edge calibrate: a bundle's thresholds from the site's own enrollment photos, at the FAR the
deployer chooses, on the device side (no torch).

    ppfr-edge calibrate artifacts/NAME --photos DIR [--far 1e-3] [--enrolled-photos 3] [--draws 3]

DIR holds one sub-folder of photos per person (raw photos: each is read, its face detected and aligned
by the edge's own pipeline, exactly as `ppfr-edge enroll` and `verify` do; `--aligned` for folders of
112x112 crops). A photo the edge refuses (no face, unreadable, too large) is skipped and counted. Every
face is protected `--draws` times with fresh CSPRNG random inputs and embedded by the bundle's
recognizer; subjects enrolled from 1, 2 and 3+ photos are scored pooled, as the server scores them
(ppfr.bundle.calibration, the same math as export). Each one's FAR point is printed, all three go to the
manifest's `thresholds_by_templates` (the server picks by a subject's template count) and the one for
`--enrolled-photos` to its `threshold`; the manifest is replaced atomically and `ppfr-cloud serve` reads
it at its next start (`ppfr-edge info` then shows the thresholds in force). Exit status 0 done, 2 bad
input.
"""

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from ppfr.bundle import BundleError, calibration

from .detect import BUNDLE_DETECTOR, DEFAULT_DETECTOR
from .errors import EdgeError, ImageError
from .pipeline import Pipeline

PROG = "ppfr-edge calibrate"
REFUSALS = (  # what in the edge's message -> why a photo was refused, in a word or three
    ("no face", "no face found"),
    ("faces found", "several faces (--strict)"),
    ("no such file", "missing file"),
    ("not a readable image", "unreadable image"),
    ("over the limit", "too many pixels"),
    ("112x112", "not a 112x112 crop"),
    ("degenerate landmarks", "cannot align (degenerate landmarks)"),
)


def parse_args(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Set a bundle's thresholds from the site's own enrollment photos (raw or aligned).",
        epilog="Exit status: 0 done, 2 bad input. See docs/edge.md.",
    )
    calibration.add_options(p, "photos")
    p.add_argument("--aligned", action="store_true", help="the photos are aligned 112x112 crops")
    detector_help = f"YuNet ONNX model (default: the bundle's {BUNDLE_DETECTOR}, else {DEFAULT_DETECTOR})"
    p.add_argument("--detector", help=detector_help.replace("%", "%%"))
    p.add_argument("--min-score", type=float, default=0.6, help="face detection score threshold (0.6)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


class Progress:
    """A bar on stderr over the photos (tqdm where installed, else a line per tenth), for long runs."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.done, self.bar = total, 0, None
        self.enabled = enabled and sys.stderr.isatty()
        if self.enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc="calibrate", unit="photo", file=sys.stderr)
            except ImportError:
                pass

    def step(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update()
        elif self.enabled and self.done % max(1, self.total // 10) == 0:
            print(f"{PROG}: {self.done}/{self.total} photos", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def embed_person(pipeline: Pipeline, photos: list[Path], draws: int, skipped: dict, progress) -> np.ndarray:
    """One person's first PHOTOS accepted photos through the edge: [photos, draws, D] embeddings. A refused
    photo is counted in `skipped` (reason -> [paths]) and left out; the next one takes its place."""
    crops = []
    for path in photos:
        if len(crops) == calibration.PHOTOS:
            break
        try:
            crops.append(cv2.cvtColor(pipeline.prepare(path).face_bgr, cv2.COLOR_BGR2RGB))
        except ImageError as err:
            skipped.setdefault(refusal_reason(str(err)), []).append(path)
        progress.step()
    if not crops:
        return np.zeros((0, draws, pipeline.frontend.manifest.embedding_size), np.float32)
    return calibration.embed_draws(pipeline.frontend, np.stack(crops), draws)


def refusal_reason(message: str) -> str:
    """Why the edge refused a photo (an ImageError's message), in a few words, for counting."""
    return next((reason for key, reason in REFUSALS if key in message), "other")


def embed_site(args, people: dict[str, list[Path]]) -> tuple[list[np.ndarray], dict, float]:
    """Every person's embeddings, the skipped photos by reason, and the seconds it took."""
    pipeline = Pipeline(
        args.bundle, aligned=args.aligned, detector=args.detector, score_threshold=args.min_score
    )
    started, skipped = time.perf_counter(), {}
    looked_at = sum(min(len(p), calibration.PHOTOS) for p in people.values())  # more where one is refused
    progress = Progress(looked_at, not args.no_progress)
    try:
        embs = [embed_person(pipeline, photos, args.draws, skipped, progress) for photos in people.values()]
    finally:
        progress.close()
    return embs, skipped, time.perf_counter() - started


def report_skipped(skipped: dict, used: int) -> None:
    """One line: how many photos the edge refused, why, and one of them."""
    if not skipped:
        return
    count = sum(map(len, skipped.values()))
    parts = ", ".join(f"{len(paths)} {reason}" for reason, paths in sorted(skipped.items()))
    example = next(iter(skipped.values()))[0]
    print(f"{PROG}: skipped {count} of {count + used} photos ({parts}), e.g. {example}")


def run(args) -> int:
    calibration.check_options(args)
    people = calibration.people_of(args.photos)
    embs, skipped, seconds = embed_site(args, people)
    used = sum(map(len, embs))
    report_skipped(skipped, used)
    kind = "aligned crops" if args.aligned else "raw photos through the edge's detection and alignment"
    where = f"site photos {args.photos} ({kind})"
    found = calibration.entries(embs, [args.far], where)
    calibration.print_entries(found)
    manifest = calibration.write(args.bundle, found, args.enrolled_photos, where)
    print(
        f"wrote threshold {manifest.threshold.cosine:.4f} (subjects enrolled from {args.enrolled_photos} "
        f"photos) and the 1/2/3+ template thresholds to {args.bundle}/manifest.json ({used} faces of "
        f"{len(people)} people, {args.draws} draws each, {seconds:.0f} s): restart ppfr-cloud serve to apply"
    )
    return 0


def main(argv=None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        return run(args)
    except (EdgeError, BundleError, calibration.CalibrationError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; the manifest is unchanged", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
