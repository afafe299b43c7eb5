"""ppfr-export: checkpoint -> bundle (ONNX + manifest, parity-checked), and the TensorRT engine.

ppfr-export --checkpoint runs/<name>/checkpoint.pt --out artifacts/<name> --key-file method.key
ppfr-export --all [--runs runs] [--out artifacts] --demo-key   every runs/*/checkpoint.pt, one table
ppfr-export engine artifacts/<name> [--profile 1,8,64]   on the serving GPU
ppfr-export calibrate artifacts/<name> --photos DIR [--far 1e-4]   thresholds from the site's photos

A keyed method (PPFR-FD) is exported only with a key from --key-file or $PPFR_METHOD_KEY, or with the
public demo key when --demo-key says so (train/keys.py); otherwise exit 2 before anything is built.
"""

import argparse
import sys
from pathlib import Path

from ppfr import data
from ppfr.bundle import BundleError
from ppfr.train import keys

EPILOG = "Build the GPU engine with: ppfr-export engine artifacts/<name> (needs tensorrt, see docs/export.md)"


def _export_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ppfr-export", description="Export a trained run as a bundle.", epilog=EPILOG
    )
    p.add_argument("--checkpoint", type=Path, help="runs/<name>/checkpoint.pt")
    p.add_argument(
        "--out", type=Path, help="bundle folder (default artifacts/<run name>); with --all the parent"
    )
    p.add_argument("--all", action="store_true", help="export every <runs>/*/checkpoint.pt")
    p.add_argument("--runs", type=Path, default=Path("runs"), help="runs folder for --all (default runs)")
    p.add_argument(
        "--configs",
        type=Path,
        nargs="+",
        help="config files or folders: parity-check (untrained, nothing written) each one without a run",
    )
    k = p.add_argument_group(
        "method key (keyed methods: ppfr_fd)",
        f"The key is a deployment secret: from --key-file or ${keys.ENV_VAR} (at least "
        f"{keys.MIN_KEY_BYTES} random bytes), never on the command line. The manifest records only its id.",
    )
    k.add_argument("--key-file", type=Path, help="file holding the method key (e.g. 32 random bytes)")
    k.add_argument(
        "--demo-key",
        action="store_true",
        help="use the public demo key (ppfr-demo-key); the manifest marks the bundle as demo",
    )
    p.add_argument(
        "--accept-degraded",
        action="store_true",
        help="write the bundle even when its TAR at FAR 1e-3 on LFW pairs is below 50%% "
        "(default: refuse, exit 2)",
    )
    p.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="wire dtype (float16)")
    p.add_argument("--data", type=Path, help="face data (default $PPFR_DATA/data or ../shared/data)")
    p.add_argument("--parity-faces", type=int, default=16, help="real faces for the parity check (16)")
    p.add_argument(
        "--eval-pairs",
        type=int,
        help="LFW pairs when the threshold is recomputed (no metrics.json; default all)",
    )
    p.add_argument(
        "--enrolled-photos",
        type=int,
        default=3,
        metavar="K",
        help="calibrate the threshold (FAR 1e-3) for subjects enrolled from K photos, scored pooled as the "
        "server does, on LFW through the exported graphs (default 3; 1: single LFW pairs)",
    )
    return p


def _engine_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ppfr-export engine", description="Build recognizer.<gpu>.plan (TensorRT)."
    )
    p.add_argument("bundle", type=Path, help="bundle folder written by ppfr-export")
    p.add_argument("--profile", default="1,8,64", help="optimisation profile batch min,opt,max (1,8,64)")
    p.add_argument("--fp32", action="store_true", help="build without FP16")
    p.add_argument("--workspace-gib", type=float, default=4.0)
    p.add_argument("--device", type=int, default=0, help="CUDA device index")
    return p


def _table(rows: list[dict]) -> str:
    head = "| run | method | payload fp16 B | payload fp32 B | front-end max rel err | fp16 wire rel err | "
    head += "recognizer min cos | threshold@FAR1e-3 | status |\n|" + "---|" * 9
    lines = [head]
    for r in rows:
        cells = [r["run"], r.get("method", "?")] + [
            r.get(k, "") for k in ("fp16", "fp32", "rel", "wire", "cos", "thr")
        ]
        lines.append("| " + " | ".join(str(c) for c in [*cells, r["status"]]) + " |")
    return "\n".join(lines)


def _export_one(checkpoint: Path, out: Path, args, method_key) -> dict:
    from .bundle import MIN_TAR, export_checkpoint

    res = export_checkpoint(
        checkpoint,
        out,
        dtype=args.dtype,
        data=args.data,
        parity_faces=args.parity_faces,
        eval_pairs=args.eval_pairs,
        enrolled_photos=args.enrolled_photos,
        method_key=method_key,
        min_tar=None if args.accept_degraded else MIN_TAR,
    )
    _print_figures(res, MIN_TAR)
    return _row(checkpoint.parent.name, res)


def _print_figures(res, min_tar: float) -> None:
    """What the exported graphs measured under the export key (also in the manifest)."""
    p = res.pairs
    print(
        f"  LFW pairs: accuracy {p['accuracy']:.2%}, TAR {p['tar']:.2%} at FAR 1e-3, threshold "
        f"{p['cosine']:.4f} ({p['set']})",
        flush=True,
    )
    at_far = [e for e in res.by_templates or [] if e["far"] == 1e-3]
    for e in at_far:
        plus = "+" if e["templates"] == max(t["templates"] for t in at_far) else ""
        print(
            f"  subjects with {e['templates']}{plus} template(s): threshold {e['cosine']:.4f}, TAR "
            f"{e['tar']:.2%} at FAR 1e-3 ({e['num_pairs']} attempts, pooled as the server scores)",
            flush=True,
        )
    if res.pairs["tar"] < min_tar:
        print(f"  DEGRADED: TAR {res.pairs['tar']:.2%} at FAR 1e-3 (written: --accept-degraded)", flush=True)
    if res.detector is None:
        print("  warning: no YuNet model found to copy into the bundle (the edge needs --detector)")


def _method_config(checkpoint: Path) -> dict:
    """The method section a checkpoint was trained with ({} when it cannot be read: export reports that)."""
    import torch

    try:
        ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False, mmap=True)
        return dict(ckpt["config"]["method"])
    except Exception:  # unreadable or foreign file: export_checkpoint gives the clear error
        return {}


def _method_key(jobs, args):
    """The key for the keyed runs among `jobs` (None when none is keyed); KeyPolicyError when missing."""
    methods = {c: _method_config(c) for c, _ in jobs if c.is_file()}
    keyed = [c for c, m in methods.items() if keys.is_keyed(m.get("name", ""))]
    if not keyed:
        return None
    try:
        key = keys.resolve(args.key_file, args.demo_key)
    except keys.KeyPolicyError as err:
        raise keys.KeyPolicyError(f"{', '.join(map(str, keyed))}: {err}") from None
    if args.key_file and keys.key_file_is_shared(args.key_file):
        print(
            f"ppfr-export: warning: {args.key_file} is readable by other users (chmod 600 it)",
            file=sys.stderr,
        )
    for c in keyed:
        print(f"{c}: method {key.describe()}", flush=True)
        if keys.trained_key_id(methods[c]) != key.key_id:
            print(  # the recognizer learned the training key's channel mix (docs/privacy.md)
                f"ppfr-export: warning: {c} was trained under another key; its accuracy and thresholds "
                "are measured again under this one (export refuses it below 50% TAR at FAR 1e-3)",
                file=sys.stderr,
            )
    return key


def _check_config(path: Path, args) -> dict:
    """Parity of an untrained model of a config that has no trained run (nothing is written)."""
    import tempfile

    import torch
    from ppfr.train.config import load_config
    from ppfr.train.model import build_model

    from . import evaluation
    from .bundle import export_model

    config = load_config(path)
    method, recognizer = build_model(config)
    if method.name == "dctdp":
        method.calibrate(torch.from_numpy(data.lfw_faces(data.data_root(args.data), 32)))
    placeholder = {
        "cosine": 1.0,
        "far": evaluation.FAR,
        "tar": 0.0,
        "accuracy": 0.0,
        "num_pairs": 0,
        "set": "none",
    }
    with tempfile.TemporaryDirectory() as tmp:
        res = export_model(
            config,
            method,
            recognizer,
            tmp,
            dtype=args.dtype,
            data=args.data,
            threshold=placeholder,
            parity_faces=args.parity_faces,
            template_thresholds=False,
        )
    row = _row(path.stem, res)
    row.update(thr="-", status="parity ok (untrained; no run to export)")
    return row


def _row(run: str, res) -> dict:
    m, p = res.manifest, res.parity
    return {
        "run": run,
        "method": m.method,
        "fp16": m.payload.float16_bytes,
        "fp32": m.payload.float32_bytes,
        "rel": f"{p.frontend_max_rel_error:.2e}",
        "wire": f"{p.frontend_wire_max_rel_error:.2e}",
        "cos": f"{p.recognizer_min_cosine:.7f}",
        "thr": f"{m.threshold.cosine:.4f}",
        "status": "ok",
    }


def _jobs(args) -> list | str:
    """[(checkpoint, bundle folder)] to export, or the one-line usage error."""
    if args.all:
        jobs = [
            (c, (args.out or Path("artifacts")) / c.parent.name)
            for c in sorted(args.runs.glob("*/checkpoint.pt"))
        ]
        if not jobs and not args.configs:
            return f"no {args.runs}/*/checkpoint.pt found: train first (make train)"
        return jobs
    if args.checkpoint is None:
        return "give --checkpoint runs/<name>/checkpoint.pt (or --all)"
    if not args.checkpoint.is_file():
        return (
            f"no checkpoint {args.checkpoint}: train first (make train), or export the shipped default "
            "pretrained/dlib_ppfr_fd/checkpoint.pt"
        )
    return [(args.checkpoint, args.out or Path("artifacts") / args.checkpoint.parent.name)]


def export_main(argv) -> int:
    parser = _export_parser()
    args = parser.parse_args(argv)
    if args.enrolled_photos < 1:
        parser.error(f"--enrolled-photos must be at least 1, not {args.enrolled_photos}")
    from ppfr.data import DataError

    from .bundle import DegradedError
    from .onnx_export import ExportError
    from .parity import ParityError

    jobs = _jobs(args)
    if isinstance(jobs, str):
        return _fail(jobs)
    try:
        method_key = _method_key(jobs, args)
    except keys.KeyPolicyError as err:
        return _fail(str(err))
    if not args.all and args.out is None and method_key is not None and not method_key.demo:
        # the bundle's own name (export/bundle.py bundle_name): one folder per key
        jobs = [(args.checkpoint, jobs[0][1].with_name(f"{jobs[0][1].name}-key{method_key.key_id[:8]}"))]
    rows, failed, refused = [], 0, 0
    for checkpoint, out in jobs:
        print(f"exporting {checkpoint} -> {out}", flush=True)
        try:
            rows.append(_export_one(checkpoint, out, args, method_key))
            print(f"  wrote {out}/frontend.onnx, recognizer.onnx, detector.onnx, manifest.json", flush=True)
        except (DegradedError, keys.KeyPolicyError) as err:  # exit 2: the caller's choice of key
            refused += 1
            rows.append({"run": checkpoint.parent.name, "status": f"REFUSED: {type(err).__name__}"})
            print(f"ppfr-export: error: {checkpoint}: {err}", file=sys.stderr, flush=True)
        except (ExportError, ParityError, DataError, BundleError, FileNotFoundError, ValueError) as err:
            failed += 1
            rows.append({"run": checkpoint.parent.name, "status": f"FAILED: {err}"})
            print(f"ppfr-export: error: {checkpoint}: {err}", file=sys.stderr, flush=True)
    if args.configs:
        done = {c.parent.name for c, _ in jobs}
        paths = [p for c in args.configs for p in (sorted(c.glob("*.yaml")) if c.is_dir() else [c])]
        for path in paths:
            if path.stem in done:
                continue
            print(f"parity check {path} (no trained run)", flush=True)
            try:
                rows.append(_check_config(path, args))
            except (ExportError, ParityError, DataError, ValueError, KeyError) as err:
                failed += 1
                rows.append({"run": path.stem, "status": f"FAILED: {err}"})
                print(f"ppfr-export: error: {path}: {err}", file=sys.stderr, flush=True)
    print(_table(rows))
    return 1 if failed else (2 if refused else 0)


def engine_main(argv) -> int:
    args = _engine_parser().parse_args(argv)
    from ppfr.bundle.tensorrt import TensorRTUnavailable

    from .tensorrt_build import build_engine

    try:
        profile = tuple(int(x) for x in args.profile.split(","))
        if len(profile) != 3:
            raise ValueError("--profile needs three batch sizes min,opt,max")
        path = build_engine(args.bundle, profile, not args.fp32, args.workspace_gib, args.device)
    except (TensorRTUnavailable, BundleError, ValueError, RuntimeError) as err:
        return _fail(str(err))
    print(f"wrote {path} and recorded it in {args.bundle}/manifest.json")
    return 0


def _fail(message: str) -> int:
    print(f"ppfr-export: error: {message}", file=sys.stderr)
    return 2


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["engine"]:
        return engine_main(argv[1:])
    if argv[:1] == ["calibrate"]:
        from .calibrate import main as calibrate_main

        return calibrate_main(argv[1:])
    return export_main(argv)


if __name__ == "__main__":
    sys.exit(main())
