"""ppfr-bench: what protection costs at the edge, on the wire and at the server, against the rgb baseline
measured side by side in the same run (DESIGN §9). Writes runs/bench/{bench.json,bench.md,bench.png}.

The other measurements are subcommands (`ppfr-bench SUBCOMMAND --help`):
  gallery     the gallery at 10k/100k/1M templates, SQLite and PostgreSQL (make bench-gallery; docs/cloud.md)
  raw-pairs   verification on raw LFW photos through the edge and the real server, next to the same pairs
              pre-aligned (ppfr.evaluation.raw_pairs; docs/edge.md)
  pooling     what enrolling several photos per person buys, and the server's pooled score
              (ppfr.evaluation.pooling; docs/cloud.md)
  sealed      sealed templates (CKKS): sizes, edge and server costs, Identify at 1k/10k/100k, LFW decisions
              sealed vs plain, a database thief's linkage (bench/sealed.py; docs/cloud.md)"""

import argparse
import importlib
import json
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from ppfr.data import data_path

from . import config as bench_config
from .machine import describe, load_average

PHOTOS = data_path("lfw", "raw_samples_250")


SUBCOMMANDS = {
    "gallery": "ppfr.bench.gallery_bench",
    "raw-pairs": "ppfr.evaluation.raw_pairs",
    "pooling": "ppfr.evaluation.pooling",
    "sealed": "ppfr.bench.sealed",
}


class BenchError(RuntimeError):
    pass


class Log:
    def __init__(self):
        self.t0 = time.perf_counter()

    def __call__(self, msg: str) -> None:
        print(f"[{time.perf_counter() - self.t0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def find_bundles(methods, artifacts: Path, explicit: list[str], log) -> tuple[dict, list[dict]]:
    """{bundle name: (dir, manifest)} in method order, and the methods skipped with the reason."""
    from ppfr.bundle import BundleError, read_manifest

    found, skipped = {}, []
    if explicit:
        for d in explicit:
            m = read_manifest(d)  # an explicitly named bundle that is not one is an error
            name = m.name or Path(d).name
            while name in found:  # two bundles of one name (two exports of a run) both stay
                name = f"{name}@{Path(d).name}"
            found[name] = (Path(d), m)
        return found, skipped
    candidates = {}
    for d in sorted(artifacts.glob("*/")) if artifacts.is_dir() else []:
        try:
            candidates[d.name] = (d, read_manifest(d))
        except BundleError:
            continue
    for method in methods:
        pick = candidates.get(f"small_{method}")
        if pick is None or pick[1].method != method:
            pick = next((c for c in candidates.values() if c[1].method == method), None)
        if pick is None:
            reason = f"no bundle of method {method} in {artifacts}/ (expected small_{method}; make export)"
            log(f"skip {method}: {reason}")
            skipped.append({"name": method, "reason": reason})
            continue
        found[pick[0].name] = pick
    return found, skipped


def run(
    cfg, bundles: dict, out_dir: Path, photos: Path, yunet, log, e2e: bool = True, gpu: bool = True
) -> dict:

    from .e2e import bench_e2e
    from .edge_bench import bench_detection, bench_frontend, enroll_request, frontend, wire_request
    from .recognizer_bench import bench_recognizer

    methods: dict = {}
    for name, (d, m) in bundles.items():
        methods[name] = {"bundle": str(d), "method": m.method, "frontend_id": m.frontend_id}
        methods[name]["protected_tensor"] = {"shape": list(m.protected_tensor.shape)}

    log(f"edge: detection + alignment on {photos}")
    det, faces = bench_detection(photos, yunet, cfg, log)
    log("edge: front-end batch 1, ONNX Runtime 1 thread")
    protected = {}
    for name, (d, _) in bundles.items():
        methods[name]["edge"], protected[name] = bench_frontend(d, faces, cfg)
        e = methods[name]["edge"]
        log(
            f"  {name:<20s} front-end p50 {e['frontend']['p50_ms']:.3f} ms"
            f" p99 {e['frontend']['p99_ms']:.3f} ms,"
            f" payload {e['payload_bytes']:,} B {e['protected_shape']}"
        )
    log(
        "recognizer: ONNX Runtime (and TensorRT where present), batch 1 and "
        + "/".join(map(str, cfg.rec_batches))
    )
    for name, (d, _) in bundles.items():
        methods[name]["recognizer"] = r = bench_recognizer(d, protected[name], cfg)
        for rt, v in r["runtimes"].items():
            thr = ", ".join(f"b{b} {t['items_per_s']:.0f}/s" for b, t in v["throughput"].items())
            log(f"  {name:<20s} {rt}: b1 p50 {v['batch1']['p50_ms']:.2f} ms; {thr}")

    gpu_info = {"available": False, "reason": "disabled with --no-gpu"}
    if gpu:
        from . import gpu_bench

        ok, what = gpu_bench.available()
        gpu_info = {"available": ok, "name" if ok else "reason": what}
        log(f"gpu: {what}")
        if ok:
            for name, (d, m) in bundles.items():
                methods[name]["gpu"] = gpu_bench.bench_gpu(d, m, cfg, log)

    if e2e:
        workdir = out_dir / "work"
        workdir.mkdir(parents=True, exist_ok=True)
        log(f"end to end: gRPC server + separate load generator, concurrency {list(cfg.concurrency)}")
        served = {}
        for name, (d, _) in bundles.items():
            fe = frontend(d)
            reqs = [wire_request(fe, fe.protect(faces[i % len(faces)])) for i in range(cfg.distinct_faces)]
            served[name] = (d, reqs, enroll_request(fe, protected[name][0]))
        for name, e2e in bench_e2e(served, cfg, workdir, log).items():
            methods[name]["e2e"] = e2e
    return {"methods": methods, "edge_detection": det, "gpu": gpu_info}


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="ppfr-bench",
        usage=f"ppfr-bench [options]\n       ppfr-bench {{{','.join(SUBCOMMANDS)}}} ...",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--artifacts", default="artifacts", help="folder of exported bundles (default: artifacts)")
    p.add_argument("--bundle", action="append", default=[], help="bench this bundle folder (repeatable)")
    p.add_argument("--methods", help=f"comma-separated methods (default: {','.join(bench_config.METHODS)})")
    p.add_argument("--out", default="runs/bench", help="output folder (default: runs/bench)")
    p.add_argument("--tiny", action="store_true", help="CI size: rgb + ppfr_fd, few iterations, short sweep")
    p.add_argument("--concurrency", help="comma-separated e2e concurrency levels (default 1,4,16,64)")
    p.add_argument("--seconds", type=float, help="measured seconds per concurrency level")
    p.add_argument("--photos", default=str(PHOTOS), help="raw photos for detection/alignment")
    p.add_argument("--detector", help="YuNet ONNX model (default: the edge's)")
    p.add_argument("--no-e2e", action="store_true", help="skip the gRPC end-to-end sweep")
    p.add_argument("--no-gpu", action="store_true", help="skip the GPU section even where a GPU is present")
    return p.parse_args(argv)


def make_config(args):
    cfg = bench_config.tiny() if args.tiny else bench_config.BenchConfig()
    if args.methods:
        cfg = replace(cfg, methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()))
    if args.concurrency:
        cfg = replace(cfg, concurrency=tuple(int(c) for c in args.concurrency.split(",")))
    if args.seconds:
        cfg = replace(cfg, e2e_seconds=args.seconds)
    return cfg


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] and argv[0] in SUBCOMMANDS:
        return importlib.import_module(SUBCOMMANDS[argv[0]]).main(argv[1:])
    args = parse_args(argv)
    log = Log()
    cfg = make_config(args)
    out_dir = Path(args.out)
    from ppfr.edge.errors import EdgeError

    try:
        from ppfr.edge.detect import DEFAULT_DETECTOR

        bundles, skipped = find_bundles(cfg.methods, Path(args.artifacts), args.bundle, log)
        if not bundles:
            raise BenchError(
                f"no bundles to bench in {args.artifacts}/: run `make train export` (or make demo) first"
            )
        if not any(m.method == bench_config.BASELINE for _, m in bundles.values()):
            log("WARNING: no rgb baseline bundle: ratios vs rgb will be empty")
        out_dir.mkdir(parents=True, exist_ok=True)
        machine = describe()
        log(f"ppfr-bench on {machine['cpu_model']} ({machine['usable_cores']} cores): {', '.join(bundles)}")
        created = datetime.now(UTC).isoformat(timespec="seconds")
        t0 = time.perf_counter()
        body = run(
            cfg,
            bundles,
            out_dir,
            Path(args.photos),
            args.detector or DEFAULT_DETECTOR,
            log,
            e2e=not args.no_e2e,
            gpu=not args.no_gpu,
        )
    except (BenchError, EdgeError, FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"ppfr-bench: error: {err}", file=sys.stderr)
        return 2
    result = {
        "schema": "ppfr.bench.v1",
        "created": created,
        "tiny": args.tiny,
        "command": ["ppfr-bench", *argv],
        "wall_s": round(time.perf_counter() - t0, 1),
        "machine": machine,
        "config": cfg.to_dict(),
        "skipped": skipped,
        **body,
    }
    write(result, out_dir, log, png=not args.no_e2e)
    return 0


def write(result: dict, out_dir: Path, log, png: bool) -> None:
    """bench.json, bench.md (printed too) and, with the end-to-end sweep, bench.png."""
    from .plot import plot
    from .report import markdown, summary_rows

    result["machine"]["load_average_at_end"] = load_average()
    result["summary"] = summary_rows(result)
    (out_dir / "bench.json").write_text(json.dumps(result, indent=1) + "\n")
    (out_dir / "bench.md").write_text(markdown(result))
    if png:
        plot(result, out_dir / "bench.png")
    log(
        f"wrote {out_dir}/bench.json, bench.md"
        + (", bench.png" if png else "")
        + f" in {result['wall_s']:.0f} s"
    )
    print((out_dir / "bench.md").read_text())


if __name__ == "__main__":
    sys.exit(main())
