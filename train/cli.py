"""ppfr-train: train a protection method with its recognizer from a YAML config.

ppfr-train --config configs/small_ppfr_fd.yaml            # writes runs/<name>/
ppfr-train --config ... --set train.max_steps=30 --set seed=1
ppfr-train --config ... --resume runs/<name>/checkpoint.pt
torchrun --nproc_per_node 4 -m ppfr.train.cli --config configs/paper_ppfr_fd.yaml
"""

import argparse
import sys

import yaml

from .config import ConfigError, load_config
from .data import DataError
from .trainer import train


def _apply_override(cfg: dict, item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"--set expects key.path=value, got {item!r}")
    key, value = item.split("=", 1)
    node = cfg
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: {p} is not a mapping")
    node[parts[-1]] = yaml.safe_load(value)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="ppfr-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--config", required=True, help="YAML config (see configs/)")
    ap.add_argument("--out", default=None, help="output folder (default runs/<name>)")
    ap.add_argument("--resume", default=None, help="checkpoint to continue from")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    ap.add_argument("--no-progress", action="store_true", help="plain log lines instead of progress bars")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config)
        for item in args.set:
            _apply_override(cfg, item)
        train(cfg, out_dir=args.out, resume=args.resume, progress=not args.no_progress)
    except (ConfigError, DataError, FileNotFoundError) as err:
        print(f"ppfr-train: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
