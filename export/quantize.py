"""An INT8 recognizer for a bundle: ONNX Runtime static quantization of recognizer.onnx (docs/benchmarks.md).

    python -m ppfr.export.quantize --bundle artifacts/dlib_ppfr_fd               # writes recognizer.int8.onnx
    python -m ppfr.export.quantize --bundle artifacts/dlib_ppfr_fd --evaluate    # + LFW fp32 vs int8
    make quantize RUN=dlib_ppfr_fd

Calibration data is what the server will see: CelebA training faces (../shared/data/celeba/aligned112,
never an evaluation image) protected by the bundle's own frontend.onnx with the random inputs the
manifest declares, one fresh draw per face, as the edge does (here from a seeded numpy generator, so a
rerun gives the same model; the edge draws from a ChaCha20 stream keyed by the OS, same distributions).
The model is written as `recognizer.int8.onnx` inside the bundle and recorded in the manifest
(`recognizerInt8`: its sha256, the recognizer.onnx it came from, format, types, calibration set and size).
The server uses it only when asked: `ppfr-cloud serve --precision int8`.

`--evaluate` measures LFW View-2 10-fold accuracy of fp32 and int8 through ONNX Runtime on the same
protected tensors (export/evaluation.recompute: single image, no flip, seeded draws), the cross-precision
accuracy (fp32 templates against int8 probes: a gallery enrolled before the switch) and the cosine
between the two embeddings of every face. The issue's rule: INT8 is an option only if accuracy drops by
at most 0.3 points.
"""

import argparse
import datetime
import hashlib
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from ppfr.bundle import Bundle, BundleError, Seeded, session, write_manifest
from ppfr.data import DataError, data_root, lfw_faces, lfw_pairs, read_faces

from . import evaluation

INT8_MODEL = "recognizer.int8.onnx"
FORMATS = ("QDQ", "QOperator")
METHODS = ("MinMax", "Entropy", "Percentile")
MAX_DROP_POINTS = 0.3  # the adoption rule, accuracy points


class QuantizeError(RuntimeError):
    """A bundle or setting the quantizer cannot work with (the CLI prints it without a traceback)."""


# --- the bundle's front-end, run as the edge runs it --------------------------------------------------


def open_bundle(path) -> Bundle:
    """The bundle with both graphs present, or QuantizeError saying what is missing."""
    try:
        bundle = Bundle(path)
    except BundleError as err:
        raise QuantizeError(str(err)) from None
    for f in (bundle.recognizer_path, bundle.frontend_path):
        if not f.is_file():
            raise QuantizeError(f"bundle {bundle.path} has no {f.name} (re-run `make export`)")
    return bundle


def calibration_paths(root: Path, n: int, seed: int) -> list[Path]:
    folder = root / "celeba" / "aligned112"
    paths = sorted(folder.glob("*/*.jpg"))
    if not paths:
        raise QuantizeError(f"no calibration faces in {folder} (need */*.jpg aligned 112x112 crops)")
    if n > len(paths):
        raise QuantizeError(f"--faces {n}: only {len(paths)} faces in {folder}")
    pick = np.sort(np.random.default_rng(seed).choice(len(paths), n, replace=False))
    return [paths[i] for i in pick]


def calibration_tensors(bundle: Bundle, root: Path, n: int, seed: int, batch: int = 32) -> np.ndarray:
    """n CelebA faces protected by the bundle's front-end, one seeded draw per face."""
    faces = read_faces(calibration_paths(root, n, seed))
    return bundle.protect(faces, Seeded(seed + 1), batch)


# --- quantization ---------------------------------------------------------------------------------------


def _reader(tensors: np.ndarray, input_name: str, batch: int):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(range(0, len(tensors), batch))

        def get_next(self):
            s = next(self._it, None)
            return None if s is None else {input_name: tensors[s : s + batch]}

    return Reader()


def quantize(
    bundle_dir,
    data=None,
    faces: int = 256,
    fmt: str = "QDQ",
    method: str = "MinMax",
    per_channel: bool = True,
    seed: int = 0,
    log=print,
):
    """Write recognizer.int8.onnx into the bundle and record it in manifest.json; returns the manifest."""
    if fmt not in FORMATS:
        raise QuantizeError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if method not in METHODS:
        raise QuantizeError(f"--calibrate-method must be one of {', '.join(METHODS)}, got {method!r}")
    if faces < 1:
        raise QuantizeError(f"--faces must be >= 1, got {faces}")
    try:
        root = data_root(data)
    except DataError as err:
        raise QuantizeError(str(err)) from None
    bundle = open_bundle(bundle_dir)
    t0 = time.time()
    tensors = calibration_tensors(bundle, root, faces, seed)
    log(f"calibration: {len(tensors)} CelebA faces protected by frontend.onnx ({time.time() - t0:.1f}s)")
    t0 = time.time()
    data_bytes = _quantized(bundle, tensors, fmt, method, per_channel)
    log(f"quantized ({fmt}, {method}, per_channel={per_channel}) in {time.time() - t0:.1f}s")
    out = bundle.path / INT8_MODEL
    tmp_out = out.with_suffix(".onnx.tmp")
    tmp_out.write_bytes(data_bytes)
    tmp_out.replace(out)
    manifest = bundle.manifest
    manifest.recognizer_int8.CopyFrom(
        _record(manifest, data_bytes, fmt, method, per_channel, root, len(tensors), seed)
    )
    write_manifest(manifest, bundle.path)
    fp32_mb = bundle.recognizer_path.stat().st_size / 1e6
    log(f"wrote {out} ({len(data_bytes) / 1e6:.1f} MB; fp32 {fp32_mb:.1f} MB)")
    return manifest


def _quantized(bundle: Bundle, tensors: np.ndarray, fmt: str, method: str, per_channel: bool) -> bytes:
    """recognizer.onnx statically quantized on the calibration tensors, as model bytes."""
    from onnxruntime import quantization as q

    input_name = bundle.recognizer.get_inputs()[0].name
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        # shape inference + graph cleanup first, as ONNX Runtime's quantization guide recommends
        root_log = logging.getLogger()
        level = root_log.level
        root_log.setLevel(logging.ERROR)  # the quantizer warns on root about every int64 shape tensor
        try:
            q.quant_pre_process(str(bundle.recognizer_path), str(pre), skip_symbolic_shape=True)
            q.quantize_static(
                str(pre),
                str(Path(tmp) / INT8_MODEL),
                _reader(tensors, input_name, 32),
                quant_format=getattr(q.QuantFormat, fmt),
                activation_type=q.QuantType.QUInt8,
                weight_type=q.QuantType.QInt8,
                per_channel=per_channel,
                calibrate_method=getattr(q.CalibrationMethod, method),
            )
        finally:
            root_log.setLevel(level)
        return (Path(tmp) / INT8_MODEL).read_bytes()


def _record(manifest, data_bytes: bytes, fmt, method, per_channel, root: Path, faces: int, seed: int):
    """The manifest's QuantizedRecognizer entry for the written INT8 model."""
    import onnxruntime as ort
    from ppfr.protos import manifest_pb2

    return manifest_pb2.QuantizedRecognizer(
        model=manifest_pb2.ModelFile(
            path=INT8_MODEL, sha256=hashlib.sha256(data_bytes).hexdigest(), size_bytes=len(data_bytes)
        ),
        source_sha256=manifest.recognizer.sha256,
        format=fmt,
        activation_type="QUInt8",
        weight_type="QInt8",
        per_channel=per_channel,
        calibrate_method=method,
        calibration_set=str(root / "celeba" / "aligned112"),
        calibration_faces=faces,
        calibration_note=(
            f"faces drawn with seed {seed}; protected by the bundle's frontend.onnx with the manifest's "
            "random inputs, one fresh draw per face"
        ),
        onnxruntime_version=ort.__version__,
        create_time=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )


# --- measurement: accuracy and latency, fp32 against int8 --------------------------------------------


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(1)


def evaluate(bundle_dir, data=None, pairs: int | None = None, seed: int = 0, threads: int = 0) -> dict:
    """LFW View-2 10-fold accuracy of fp32 and int8 through ONNX Runtime on the same protected tensors."""
    from ppfr.train.evaluate import verification_metrics

    bundle = open_bundle(bundle_dir)
    int8 = int8_path(bundle)
    root = data_root(data)
    sessions = {"fp32": session(bundle.recognizer_path, threads), "int8": session(int8, threads)}
    name = sessions["fp32"].get_inputs()[0].name
    rng = Seeded(seed)
    embs: dict[str, list] = {"fp32": [], "int8": []}

    def run(precision, x):
        (e,) = sessions[precision].run(None, {name: x})
        return e / np.linalg.norm(e, axis=1, keepdims=True)

    def embed_both(images):  # one draw per face; both precisions embed the same protected tensors
        x = bundle.protect(images, rng)
        embs["int8"].append(run("int8", x))
        embs["fp32"].append(run("fp32", x))
        return embs["fp32"][-1]

    res = {"fp32": evaluation.recompute(root, embed_both, pairs)}
    replay = iter(embs["int8"])
    res["int8"] = evaluation.recompute(root, lambda images: next(replay), pairs)  # same order of calls
    fp, i8 = np.concatenate(embs["fp32"]), np.concatenate(embs["int8"])
    cos = _cosines(fp, i8)
    # fp32 templates (enrolled before the switch) against int8 probes
    pair_list, same, fold = lfw_pairs(root, pairs)
    names = sorted({p for pair in pair_list for p in pair})
    index = {n: i for i, n in enumerate(names)}
    a = np.array([index[p[0]] for p in pair_list])
    b = np.array([index[p[1]] for p in pair_list])
    cross = verification_metrics((fp[a].astype(np.float64) * i8[b]).sum(1), same, fold)
    acc = {p: res[p]["accuracy"] for p in res}
    drop = 100 * (acc["fp32"] - acc["int8"])
    return {
        "bundle": str(bundle.path),
        "num_pairs": res["fp32"]["num_pairs"],
        "set": res["fp32"]["set"],
        "accuracy": acc,
        "tar_at_far_1e-3": {p: res[p]["tar"] for p in res},
        "accuracy_fp32_gallery_int8_probe": cross["accuracy_mean"],
        "drop_points": round(drop, 3),
        "adopted": bool(drop <= MAX_DROP_POINTS),
        "cosine_fp32_int8": {
            "mean": float(cos.mean()),
            "p01": float(np.percentile(cos, 1)),
            "min": float(cos.min()),
            "faces": len(cos),
        },
    }


def latency(
    bundle_dir, iters: int = 400, warmup: int = 20, rounds: int = 10, seed: int = 0, also=None
) -> dict:
    """Batch-1 latency of fp32 and int8 recognizers (and any `also` {name: model path}), ONNX Runtime
    CPU, 1 thread, on real protected faces; all are timed in alternating rounds in one process, so load
    changes hit them alike."""
    bundle = open_bundle(bundle_dir)
    int8 = int8_path(bundle)
    x = bundle.protect(lfw_faces(data_root(), 16), Seeded(seed))
    sessions = {"fp32": session(bundle.recognizer_path, 1), "int8": session(int8, 1)}
    sessions.update({k: session(v, 1) for k, v in (also or {}).items()})
    name = sessions["fp32"].get_inputs()[0].name
    lat: dict[str, list] = {p: [] for p in sessions}
    for s in sessions.values():
        for i in range(warmup):
            s.run(None, {name: x[i % len(x)][None]})
    for _ in range(rounds):
        for p, s in sessions.items():
            for i in range(iters // rounds):
                one = x[i % len(x)][None]
                t0 = time.perf_counter_ns()
                s.run(None, {name: one})
                lat[p].append((time.perf_counter_ns() - t0) / 1e6)
    out = {p: _percentiles(v) for p, v in lat.items()}
    out["speedup_p50"] = {p: round(out["fp32"]["p50_ms"] / out[p]["p50_ms"], 3) for p in lat if p != "fp32"}
    return out


def _percentiles(samples_ms: list[float]) -> dict:
    p50, p90, p99 = np.percentile(samples_ms, [50, 90, 99])
    return {"n": len(samples_ms), "p50_ms": round(p50, 4), "p90_ms": round(p90, 4), "p99_ms": round(p99, 4)}


def int8_path(bundle: Bundle) -> Path:
    m = bundle.manifest
    if not m.HasField("recognizer_int8") or not m.recognizer_int8.model.path:
        raise QuantizeError(
            f"bundle {bundle.path} has no INT8 recognizer: run python -m ppfr.export.quantize --bundle "
            f"{bundle.path}"
        )
    path = bundle.path / m.recognizer_int8.model.path
    if not path.is_file():
        raise QuantizeError(f"bundle {bundle.path}: {path.name} is missing (re-run the quantizer)")
    return path


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m ppfr.export.quantize",
        description="INT8 recognizer for a bundle (ONNX Runtime static quantization, calibrated on "
        "CelebA training faces protected by the bundle's own front-end)",
    )
    p.add_argument("--bundle", required=True, type=Path, help="bundle folder, e.g. artifacts/dlib_ppfr_fd")
    p.add_argument("--data", default=None, help="face data (default $PPFR_DATA/data or ../shared/data)")
    p.add_argument("--faces", type=int, default=256, help="calibration faces (default 256)")
    p.add_argument("--format", default="QDQ", choices=FORMATS, help="quantized graph format (default QDQ)")
    p.add_argument("--calibrate-method", default="MinMax", choices=METHODS, help="default MinMax")
    p.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor, not per channel")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-quantize", action="store_true", help="measure the bundle's existing INT8 model")
    p.add_argument("--evaluate", action="store_true", help="LFW View-2 accuracy, fp32 vs int8")
    p.add_argument("--pairs", type=int, default=None, help="--evaluate on this many pairs (default all 6000)")
    p.add_argument("--latency", action="store_true", help="batch-1 latency fp32 vs int8 (ORT CPU, 1 thread)")
    p.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="NAME=MODEL",
        help="--latency: time this model too, in the same run (e.g. the other format)",
    )
    p.add_argument("--json", type=Path, default=None, help="write the measurements here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    result = {}
    try:
        if not args.skip_quantize:
            m = quantize(
                args.bundle,
                args.data,
                args.faces,
                args.format,
                args.calibrate_method,
                not args.per_tensor,
                args.seed,
            )
            r8 = m.recognizer_int8
            result["recognizer_int8"] = {
                "path": r8.model.path,
                "sha256": r8.model.sha256,
                "format": r8.format,
            }
        if args.latency:
            also = {}
            for item in args.also:
                name, sep, path = item.partition("=")
                if not sep or not Path(path).is_file():
                    raise QuantizeError(f"--also {item!r}: want NAME=MODEL with an existing model file")
                also[name] = Path(path)
            result["latency_batch1_1thread"] = r = latency(args.bundle, seed=args.seed, also=also)
            print("batch-1 latency, ONNX Runtime CPU, 1 thread (alternating rounds, one process):")
            for k, v in r.items():
                if k != "speedup_p50":
                    x = f", {r['speedup_p50'][k]:.2f}x fp32's speed" if k in r["speedup_p50"] else ""
                    ms = f"p50 {v['p50_ms']:.3f} ms  p90 {v['p90_ms']:.3f}  p99 {v['p99_ms']:.3f}"
                    print(f"  {k:>10}: {ms}{x}")
        if args.evaluate:
            result["lfw"] = r = evaluate(args.bundle, args.data, args.pairs, args.seed)
            a = r["accuracy"]
            print(
                f"LFW {r['num_pairs']} pairs, 10-fold: fp32 {100 * a['fp32']:.2f}%, "
                f"int8 {100 * a['int8']:.2f}% "
                f"(drop {r['drop_points']:.2f} points; fp32 gallery + int8 probe "
                f"{100 * r['accuracy_fp32_gallery_int8_probe']:.2f}%); cosine fp32-int8 mean "
                f"{r['cosine_fp32_int8']['mean']:.4f} min {r['cosine_fp32_int8']['min']:.4f}"
            )
            verdict = "adopted as an option" if r["adopted"] else "NOT adopted"
            print(f"rule: drop <= {MAX_DROP_POINTS} points -> {verdict}")
    except (QuantizeError, DataError, BundleError) as err:
        print(f"quantize: error: {err}", file=sys.stderr)
        return 2
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
