"""ppfr-export calibrate: a bundle's thresholds from the site's own enrollment photos, at the FAR the
deployer chooses.

    ppfr-export calibrate artifacts/NAME --photos DIR [--far 1e-4] [--enrolled-photos 3]

DIR holds one folder per person of aligned 112x112 face crops (JPEG/PNG; the layout of
../shared/data/lfw/aligned112). Through the bundle's own graphs (ppfr.bundle: the front-end with fresh
CSPRNG draws per face, the recognizer), subjects enrolled from 1, 2 and 3+ photos are scored pooled as
the server scores them (export/evaluation.pooled_people); each one's FAR point is printed, and the one
for --enrolled-photos becomes the manifest's `threshold`; all three go to `thresholds_by_templates`, from
which `ppfr-cloud serve` picks by each subject's template count from its next start. Exit status 0 done,
2 bad input.
"""

import argparse
import sys
from pathlib import Path

from ppfr import data
from ppfr.bundle import Bundle, BundleError, read_manifest, write_manifest
from ppfr.protos import manifest_pb2

from .evaluation import TEMPLATE_COUNTS, pooled_people

IMAGES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def people_of(folder: Path) -> list[list[Path]]:
    """Per person (sub-folder, sorted), its image files (sorted)."""
    if not folder.is_dir():
        raise data.DataError(f"--photos {folder}: not a folder (one sub-folder of aligned crops per person)")
    people = [
        sorted(p for p in person.iterdir() if p.suffix.lower() in IMAGES)
        for person in sorted(folder.iterdir())
        if person.is_dir()
    ]
    return [crops for crops in people if crops]


def calibrate(bundle_dir, photos, far: float, threads: int = 0) -> list[dict]:
    """FAR `far` entries for subjects with 1, 2 and 3+ templates (TEMPLATE_COUNTS), on the site's photos."""
    bundle = Bundle(bundle_dir, threads)
    people = people_of(Path(photos))
    entries = []
    for k in TEMPLATE_COUNTS:
        entry = pooled_people(people, lambda faces: bundle.embed(bundle.protect(faces)), k, far, str(photos))
        entries.append({**entry, "templates": k})
    return entries


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ppfr-export calibrate",
        description="Set a bundle's threshold from the site's own enrollment photos.",
    )
    p.add_argument("bundle", type=Path, help="bundle folder written by ppfr-export")
    p.add_argument(
        "--photos", type=Path, required=True, help="one sub-folder of aligned 112x112 crops per person"
    )
    p.add_argument("--far", type=float, default=1e-3, help="false accept rate to calibrate at (default 1e-3)")
    p.add_argument(
        "--enrolled-photos",
        type=int,
        default=3,
        choices=TEMPLATE_COUNTS,
        help="photos a subject is enrolled from: picks the threshold written to the manifest (default 3)",
    )
    return p


def _threshold(entry: dict, photos: Path, accuracy: float) -> manifest_pb2.VerificationThreshold:
    return manifest_pb2.VerificationThreshold(
        cosine=entry["cosine"],
        false_accept_rate=entry["far"],
        evaluation_set=(
            f"site photos {photos}: {entry['subjects']} subjects enrolled from {entry['templates']} "
            f"photos each, scored pooled as the server does; {entry['genuine']} genuine and "
            f"{entry['impostor']} impostor attempts, the bundle's graphs (ppfr-export calibrate)"
        ),
        num_pairs=entry["num_pairs"],
        accuracy=accuracy,  # the LFW pairs' figure: pooling defines none
        true_accept_rate=entry["tar"],
    )


def _write(bundle_dir: Path, entries: list, chosen: dict, photos: Path) -> None:
    """Every entry into `thresholds_by_templates`, the chosen one into `threshold`."""
    manifest = read_manifest(bundle_dir)
    accuracy = manifest.threshold.accuracy
    manifest.threshold.CopyFrom(_threshold(chosen, photos, accuracy))
    del manifest.thresholds_by_templates[:]
    for e in entries:
        manifest.thresholds_by_templates.add(
            templates=e["templates"], threshold=_threshold(e, photos, accuracy)
        )
    write_manifest(manifest, bundle_dir)


def main(argv) -> int:
    args = _parser().parse_args(argv)
    if not 0 < args.far < 1:
        return _fail(f"--far must be between 0 and 1, not {args.far:g}")
    try:
        entries = calibrate(args.bundle, args.photos, args.far)
    except (BundleError, data.DataError) as err:
        return _fail(str(err))
    for e in entries:
        _report(e)
    chosen = next(e for e in entries if e["templates"] == args.enrolled_photos)
    _write(args.bundle, entries, chosen, args.photos)
    print(
        f"wrote threshold {chosen['cosine']:.4f} to {args.bundle}/manifest.json (read at the server's start)"
    )
    return 0


def _report(e: dict) -> None:
    plus = "+" if e["templates"] == TEMPLATE_COUNTS[-1] else ""
    print(
        f"subjects with {e['templates']}{plus} template(s): threshold {e['cosine']:.4f} at FAR {e['far']:g}, "
        f"TAR {e['tar']:.2%} ({e['subjects']} subjects, {e['genuine']} genuine and {e['impostor']} "
        "impostor attempts)"
    )
    expected = e["impostor"] * e["far"]  # impostor attempts above the threshold
    if expected < 10:
        print(
            f"  warning: {e['impostor']} impostor attempts put only {expected:.1f} above a FAR {e['far']:g} "
            "threshold: it is rough; add people or choose a larger FAR",
            file=sys.stderr,
        )


def _fail(message: str) -> int:
    print(f"ppfr-export calibrate: error: {message}", file=sys.stderr)
    return 2
