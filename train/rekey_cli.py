"""ppfr-train rekey: a trained PPFR-FD recognizer (default: the shipped one) adapted to your own key.

    head -c 32 /dev/urandom | base64 > method.key && chmod 600 method.key
    ppfr-train rekey --key-file method.key            # -> runs/dlib_ppfr_fd_rekeyed/checkpoint.pt
    ppfr-eval --checkpoint runs/dlib_ppfr_fd_rekeyed/checkpoint.pt --key-file method.key
    ppfr-export --checkpoint runs/dlib_ppfr_fd_rekeyed/checkpoint.pt --key-file method.key

What it changes and why: train/rekey.py. The key comes from --key-file or $PPFR_METHOD_KEY; the
checkpoint and rekey.json hold only its id.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from . import keys
from .cli import _key_arg, deployment_key
from .config import ConfigError
from .data import DataError, load_face_folder, resolve

DEFAULT_FROM = "pretrained/dlib_ppfr_fd/checkpoint.pt"
# docs/results.md, "Re-keying": 800 / 200 / 400 left fresh keys under TAR@1e-3 80% on the lean default
STEPS = 2000  # comparison layers and classifier, on tokens read once
READ_STEPS = 500  # then the whole router, its per-map reader included
ENTRY_STEPS = 1200  # then the stem, through the new router, towards the source


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="ppfr-train rekey", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    _key_arg(ap)
    ap.add_argument("--from", dest="src", default=DEFAULT_FROM, help=f"checkpoint to adapt ({DEFAULT_FROM})")
    ap.add_argument("--out", default=None, help="output folder (default runs/<source folder>_rekeyed)")
    ap.add_argument("--steps", type=int, default=STEPS, help=f"router steps, per-map reader frozen ({STEPS})")
    ap.add_argument(
        "--read-steps", type=int, default=READ_STEPS, help=f"then router steps, reader too ({READ_STEPS})"
    )
    ap.add_argument(
        "--entry-steps",
        type=int,
        default=ENTRY_STEPS,
        help=f"then stem steps towards the source's entry activation and embedding, batch 16 ({ENTRY_STEPS})",
    )
    ap.add_argument("--entry-lr", type=float, default=5e-4, help="their peak rate (5e-4)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--read-lr", type=float, default=1e-3, help="peak rate of the second stage (1e-3)")
    ap.add_argument("--read-lr-mult", type=float, default=0.3, help="the reader's share of it (0.3)")
    ap.add_argument(
        "--router",
        choices=("compare", "classify"),
        default="compare",
        help="what of the router learns: its comparison layers and classifier (default), or the classifier",
    )
    ap.add_argument("--views", type=int, default=2, help="views per training face: as is, flipped+augmented")
    ap.add_argument("--max-images", type=int, default=None, help="training faces (default: all; tests)")
    ap.add_argument("--fit-images", type=int, default=1024, help="faces for the stem's translation (1024)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument("--seed", type=int, default=0)
    return ap


def _source(path: str, key: keys.MethodKey):
    """(config, training-key method, recognizer, new-key config, new-key method) of the source."""
    from .model import load_checkpoint

    config, method, recognizer, _ = load_checkpoint(resolve(path))
    if not (keys.is_keyed(method.name) and getattr(method, "route", False)):
        raise ConfigError(f"{path}: re-keying adapts a PPFR-FD chain-router recognizer (method.route: true)")
    if keys.sealed_key_id(config["method"]) is not None:
        raise ConfigError(f"{path} is itself adapted to a deployment key: start from the one it came from")
    new_config, new_method = keys.rekey(config, method, key.key)
    return config, method, recognizer, new_config, new_method


def run(args, key: keys.MethodKey) -> Path:
    from .model import save_checkpoint
    from .rekey import adapt, default_out

    t0 = time.time()
    config, method, recognizer, new_config, new_method = _source(args.src, key)
    dc = config["data"]
    faces = load_face_folder(
        dc["train"], dc.get("labels_csv"), dc.get("overlap_json"), dc.get("cache"), args.max_images
    )
    opts = {
        "seed": args.seed,
        "fit_images": args.fit_images,
        "steps": args.steps,
        "read_steps": args.read_steps,
        "read_lr": args.read_lr,
        "read_lr_mult": args.read_lr_mult,
        "entry_steps": args.entry_steps,
        "entry_lr": args.entry_lr,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "weight_decay": 5e-4,
        "augment": config.get("train", {}).get("augment", {}),
        "log_every": 25,
        "router": args.router,
        "views": args.views,
    }
    print(
        f"ppfr-train rekey: {args.src}, {len(faces.labels)} training faces, "
        f"{args.steps} + {args.read_steps} router steps, {args.entry_steps} stem steps",
        flush=True,
    )
    report = adapt(method, new_method, recognizer, faces.images, opts)
    out = Path(args.out) if args.out else default_out(args.src)
    state = {
        "step": args.steps + args.read_steps + args.entry_steps,
        "rekeyed_from": str(args.src),
        "train_seconds": report["seconds"],
    }
    save_checkpoint(out / "checkpoint.pt", new_config, new_method, recognizer, state=state)
    report |= {
        "cpu_seconds": round(time.process_time(), 1),  # all threads: wall time depends on the machine's load
        "from": str(args.src),
        "key_id": key.key_id,
        "options": opts,
        "total_seconds": round(time.time() - t0, 1),
    }
    (out / "rekey.json").write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"wrote {out / 'checkpoint.pt'} (method key id {key.key_id}) in {report['total_seconds']:.0f} s "
        f"({report['cpu_seconds']:.0f} CPU seconds)"
    )
    return out / "checkpoint.pt"


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if min(args.steps, args.read_steps, args.entry_steps, args.batch_size - 1, args.views - 1) < 0:
        print("ppfr-train rekey: error: steps must be >= 0, batch size and views >= 1", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        key = deployment_key(args.key_file)
        if key is None:
            raise keys.KeyPolicyError(f"rekey needs the new key: --key-file FILE or ${keys.ENV_VAR}")
        print(f"ppfr-train rekey: method {key.describe()}", flush=True)
        run(args, key)
    except (ConfigError, DataError, FileNotFoundError, keys.KeyPolicyError, ValueError) as err:
        print(f"ppfr-train rekey: error: {err}", file=sys.stderr)
        return 2
    return 0
