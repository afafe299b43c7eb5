"""ppfr-export calibrate: a bundle's thresholds from the site's own aligned face crops, at the FAR the
deployer chooses.

    ppfr-export calibrate artifacts/NAME --photos DIR [--far 1e-4] [--enrolled-photos 3] [--draws 3]

DIR holds one folder per person of aligned 112x112 face crops (JPEG/PNG; the layout of
../shared/data/lfw/aligned112). For raw photos use `ppfr-edge calibrate` (the edge detects and aligns
them; export never imports the edge): both share the math and the manifest update of
ppfr.bundle.calibration. Through the bundle's own graphs (the front-end with fresh CSPRNG draws per face,
`--draws` times, and the recognizer), subjects enrolled from 1, 2 and 3+ photos are scored pooled as the
server scores them; each one's FAR point is printed, the one for --enrolled-photos becomes the
manifest's `threshold`, and all three go to `thresholds_by_templates`, from which `ppfr-cloud serve`
picks by each subject's template count from its next start. Exit status 0 done, 2 bad input.
"""

import argparse
import sys

from ppfr import data
from ppfr.bundle import Bundle, BundleError, calibration


def calibrate(bundle_dir, photos, far: float, draws: int = 3, threads: int = 0) -> list[dict]:
    """FAR `far` entries for subjects with 1, 2 and 3+ templates, on the site's aligned crops."""
    bundle = Bundle(bundle_dir, threads)
    embs = []
    for crops in calibration.people_of(photos).values():
        faces = data.read_faces(crops[: calibration.PHOTOS])
        embs.append(calibration.embed_draws(bundle, faces, draws))
    return calibration.entries(embs, [far], f"site photos {photos}")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ppfr-export calibrate",
        description="Set a bundle's threshold from the site's own aligned crops (raw photos: ppfr-edge "
        "calibrate).",
    )
    calibration.add_options(p, "aligned 112x112 crops")
    return p


def main(argv) -> int:
    args = _parser().parse_args(argv)
    try:
        calibration.check_options(args)
        found = calibrate(args.bundle, args.photos, args.far, args.draws)
        manifest = calibration.write(
            args.bundle, found, args.enrolled_photos, f"site photos {args.photos} (aligned crops)"
        )
    except (BundleError, data.DataError, calibration.CalibrationError) as err:
        print(f"ppfr-export calibrate: error: {err}", file=sys.stderr)
        return 2
    calibration.print_entries(found)
    print(
        f"wrote threshold {manifest.threshold.cosine:.4f} to {args.bundle}/manifest.json (read at the "
        "server's start)"
    )
    return 0
