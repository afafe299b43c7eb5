"""ppfr-attack: inversion and linkage attacks on exported bundles (docs/privacy.md)."""

import argparse
import sys
from pathlib import Path

from . import harness, report
from .server_view import find_bundles


def parse(argv=None):
    d = harness.Config()
    p = argparse.ArgumentParser(prog="ppfr-attack", description=__doc__)
    p.add_argument(
        "--bundle", action="append", type=Path, help="bundle folder (repeat); default: all in --bundles-dir"
    )
    p.add_argument("--bundles-dir", type=Path, default=Path("artifacts"))
    p.add_argument("--out", type=Path, default=d.out, help="output folder (attack.json, attack.md, grid.png)")
    p.add_argument("--data", type=Path, default=d.data, help="shared face data (celeba, lfw, teacher)")
    p.add_argument("--runs", type=Path, default=d.runs, help="training runs (white-box checkpoints)")
    p.add_argument("--victims", type=int, default=d.n_victims, help="LFW victim people (2 images each)")
    p.add_argument("--calib", type=int, default=d.n_calib, help="further LFW people for FAR calibration")
    p.add_argument("--max-attacker", type=int, default=None, help="cap on attacker CelebA images")
    p.add_argument(
        "--utkface",
        type=int,
        default=None,
        help="leak-filtered UTKFace faces added to the attacker's (default: all; 0: none)",
    )
    p.add_argument(
        "--attacker-config",
        type=Path,
        default=d.attacker_config,
        help="training config whose UTKFace folder and leak filter the attacker uses",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=d.steps,
        help="U-Net training steps (0: no inversion, only linkage, key renewal and stem images)",
    )
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument(
        "--widths",
        default=",".join(map(str, d.widths)),
        help="U-Net widths per level (literature: 64,128,256,512,1024 with --res 112)",
    )
    p.add_argument("--res", type=int, default=d.res, help="U-Net working resolution, divides 112")
    p.add_argument("--white-box", action="store_true", help="also attack with the method + key (checkpoint)")
    p.add_argument("--judges", default="dlib,rgb", help="comma list of dlib, rgb")
    p.add_argument("--rgb-judge", type=Path, default=None, help="rgb bundle used as second judge")
    p.add_argument("--threads", type=int, default=d.threads, help="torch/onnxruntime threads")
    p.add_argument("--seed", type=int, default=d.seed)
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse(argv)
    bundles = a.bundle or find_bundles(a.bundles_dir)
    if not bundles:
        print(
            f"ppfr-attack: no bundles given and none under {a.bundles_dir}/ (run `make export` first)",
            file=sys.stderr,
        )
        return 2
    cfg = harness.Config(
        data=a.data,
        out=a.out,
        runs=a.runs,
        n_victims=a.victims,
        n_calib=a.calib,
        max_attacker=a.max_attacker,
        utkface=a.utkface,
        attacker_config=a.attacker_config,
        steps=a.steps,
        batch=a.batch,
        lr=a.lr,
        widths=tuple(int(w) for w in a.widths.split(",")),
        res=a.res,
        white_box=a.white_box,
        threads=a.threads,
        seed=a.seed,
        judges=[j.strip() for j in a.judges.split(",") if j.strip()],
        rgb_judge=a.rgb_judge,
    )
    try:
        result = harness.run(bundles, cfg, save=report.saver(cfg.out))
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"ppfr-attack: {err}", file=sys.stderr)
        return 1
    files = report.write(result, cfg.out)
    print((cfg.out / "attack.md").read_text())
    print("wrote " + ", ".join(str(f) for f in files.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
