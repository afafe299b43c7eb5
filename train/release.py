"""Turns a finished run into the shipped pretrained default (see pretrained/README.md).

    python -m ppfr.train.release runs/dlib_ppfr_fd pretrained/dlib_ppfr_fd

writes OUT/checkpoint.pt (model.save_release: float16, the frozen pretrained trunk left out) and copies
the run's metrics.json beside it, which export takes the verification threshold from.
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

from .model import save_release


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="finished run folder (checkpoint.pt + metrics.json)")
    ap.add_argument("out", type=Path, help="release folder to write")
    args = ap.parse_args(argv)
    for name in ("checkpoint.pt", "metrics.json"):
        if not (args.run / name).is_file():
            print(
                f"error: {args.run / name} does not exist: finish the run first (make train)", file=sys.stderr
            )
            return 2
    path = save_release(args.run / "checkpoint.pt", args.out / "checkpoint.pt")
    metrics = json.loads((args.run / "metrics.json").read_text())
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    if (args.run / "roc.png").is_file():
        shutil.copy(args.run / "roc.png", args.out / "roc.png")
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB) and {args.out / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
