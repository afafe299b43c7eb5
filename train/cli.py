"""ppfr-train: train a protection method with its recognizer from a YAML config.

ppfr-train --config configs/small_ppfr_fd.yaml            # writes runs/<name>/
ppfr-train --config ... --set train.max_steps=30 --set seed=1
ppfr-train --config ... --resume runs/<name>/checkpoint.pt
ppfr-train --config configs/dlib_ppfr_fd.yaml --key-file method.key   # PPFR-FD under your own key
ppfr-train rekey --key-file method.key     # the shipped default adapted to your key (ppfr-train rekey -h)
ppfr-train slim --width 48 --depth 2       # the shipped default, a leaner pixel stem (ppfr-train slim -h)
torchrun --nproc_per_node 4 -m ppfr.train.cli --config configs/paper_ppfr_fd.yaml

A keyed method's key (PPFR-FD) comes from --key-file FILE or $PPFR_METHOD_KEY, never from argv or the
config; checkpoints and metrics.json record only its id (train/keys.py). Without either, the config's
public demo key is used.
"""

import argparse
import os
import sys

import yaml

from . import keys
from .config import ConfigError, load_config
from .data import DataError
from .trainer import train


def _apply_override(cfg: dict, item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"--set expects key.path=value, got {item!r}")
    key, value = item.split("=", 1)
    if key == "method.key":
        raise ConfigError("the method key is never given in argv: use --key-file FILE or $PPFR_METHOD_KEY")
    node = cfg
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: {p} is not a mapping")
    node[parts[-1]] = yaml.safe_load(value)


def deployment_key(key_file, environ=None) -> keys.MethodKey | None:
    """The key from --key-file or $PPFR_METHOD_KEY (KeyPolicyError if unusable); None when neither."""
    environ = os.environ if environ is None else environ
    if not key_file and not environ.get(keys.ENV_VAR):
        return None
    return keys.resolve(key_file, environ=environ)


def _with_key(cfg: dict, key: keys.MethodKey | None) -> dict:
    if key is None:
        return cfg
    if not keys.is_keyed(cfg.get("method", {}).get("name", "")):
        raise ConfigError(f"a method key was given but method {cfg['method'].get('name')!r} has none")
    print(f"ppfr-train: method {key.describe()}", flush=True)
    return {**cfg, "method": {**cfg["method"], "key": key.key}}


def _key_arg(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--key-file",
        default=None,
        help=f"file holding the PPFR-FD method key (or ${keys.ENV_VAR}); never written anywhere, only its id",
    )


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["rekey"]:
        from .rekey_cli import main as rekey_main

        return rekey_main(argv[1:])
    if argv[:1] == ["slim"]:
        from .slim_cli import main as slim_main

        return slim_main(argv[1:])
    ap = argparse.ArgumentParser(
        prog="ppfr-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--config", required=True, help="YAML config (see configs/)")
    ap.add_argument("--out", default=None, help="output folder (default runs/<name>)")
    ap.add_argument("--resume", default=None, help="checkpoint to continue from")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    ap.add_argument("--no-progress", action="store_true", help="plain log lines instead of progress bars")
    _key_arg(ap)
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config)
        for item in args.set:
            _apply_override(cfg, item)
        cfg = _with_key(cfg, deployment_key(args.key_file))
        train(cfg, out_dir=args.out, resume=args.resume, progress=not args.no_progress)
    except (ConfigError, DataError, FileNotFoundError, keys.KeyPolicyError) as err:
        print(f"ppfr-train: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
