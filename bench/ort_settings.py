"""`ppfr-bench ort-settings`: the recognizer on ONNX Runtime CPU under different session settings, measured
side by side on real protected LFW faces, to choose the server's settings (docs/benchmarks.md).

One session per row, the settings varied one at a time from the server's own (the first row): graph
optimisation level (disable / basic / extended / all), intra-op threads (1, 2, 0 = ONNX Runtime's default,
one per physical core), intra-op threads that sleep instead of spinning when idle, execution mode
(sequential, or parallel with N inter-op threads). Then the ways to use N cores from N Python threads
(N = --workers, default the usable cores): one session with N intra-op threads shared by N callers, one
session with 1 thread shared by N callers (`ppfr-cloud serve --engines N --threads 1`), and N sessions
with 1 thread each, one per caller. Each row gets batch-1 latency (p50/p99 per call) and throughput
(faces/s) at batch 1 and at --batch (16). The rows are interleaved in --rounds rounds (the order rotates
each round), so a change of load during the run hits every row alike; ratios to the server's row are
medians of the per-round ratios.

    ppfr-bench ort-settings --bundle artifacts/dlib_ppfr_fd --out runs/ort_settings
    ppfr-bench ort-settings --bundle artifacts/dlib_rgb --rounds 3 --seconds 0.2   # quicker
"""

import argparse
import json
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .machine import describe, load_average
from .recognizer_bench import batch_of
from .stats import summarize

LEVELS = ("disable", "basic", "extended", "all")


class OrtBenchError(RuntimeError):
    pass


@dataclass(frozen=True)
class Setting:
    name: str
    level: str = "all"
    intra: int = 0  # 0 = ONNX Runtime's default (one per physical core)
    inter: int = 1
    parallel: bool = False  # execution mode ORT_PARALLEL (else ORT_SEQUENTIAL)
    spin: bool = True  # intra-op pool threads busy-wait for work (ONNX Runtime's default)
    sessions: int = 1
    callers: int = 1  # Python threads calling run() at once (round-robin over the sessions)

    def describe(self) -> str:
        mode = f"parallel, inter {self.inter}" if self.parallel else "sequential"
        spin = "" if self.spin else ", no spinning"
        return (
            f"{self.level}, intra {self.intra}{spin}, {mode}, {self.sessions} sess x {self.callers} callers"
        )


def settings(workers: int) -> list[Setting]:
    """The server's setting first, then one change at a time, then the N-caller layouts."""
    rows = [Setting("server")]
    rows += [Setting(f"level {lv}", level=lv) for lv in LEVELS if lv != "all"]
    rows += [Setting(f"intra {n}", intra=n) for n in sorted({1, 2, workers})]
    rows.append(Setting("intra 0 no spinning", spin=False))
    rows.append(Setting(f"parallel inter {workers}", inter=workers, parallel=True))
    if workers > 1:
        n = workers
        rows.append(Setting(f"1 sess intra 0 x {n} callers", callers=n))
        rows.append(Setting(f"1 sess intra 1 x {n} callers", intra=1, callers=n))
        rows.append(Setting(f"{n} sess intra 1 x {n} callers", intra=1, sessions=n, callers=n))
    return rows


def make_session(model: Path, s: Setting):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[s.level]
    options.execution_mode = (
        ort.ExecutionMode.ORT_PARALLEL if s.parallel else ort.ExecutionMode.ORT_SEQUENTIAL
    )
    options.intra_op_num_threads = s.intra
    options.inter_op_num_threads = s.inter
    options.log_severity_level = 3
    if not s.spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(model), sess_options=options, providers=["CPUExecutionProvider"])


class Row:
    """A setting's sessions and the samples gathered for it over the rounds."""

    def __init__(self, model: Path, setting: Setting):
        self.setting = setting
        self.sessions = [make_session(model, setting) for _ in range(setting.sessions)]
        self.input = self.sessions[0].get_inputs()[0].name
        self.output = self.sessions[0].get_outputs()[0].name
        self.latency_ms: list[float] = []  # batch-1 calls
        self.rate: dict[int, list[float]] = {}  # batch -> faces/s per round

    def chunk(self, x: np.ndarray, seconds: float, warmup: int) -> tuple[float, list[float]]:
        """Each caller runs batch x for `seconds` after `warmup` calls; (faces/s of all callers together,
        per-call latencies in ms)."""
        n = self.setting.callers
        lat: list[list[float]] = [[] for _ in range(n)]
        start = threading.Barrier(n + 1)
        stop = [0.0]

        def caller(i: int) -> None:
            sess, feed = self.sessions[i % len(self.sessions)], {self.input: x}
            for _ in range(warmup):
                sess.run([self.output], feed)
            start.wait()
            clock, out = time.perf_counter_ns, lat[i]
            while True:
                t0 = clock()
                sess.run([self.output], feed)
                out.append((clock() - t0) / 1e6)
                if len(out) >= 2 and time.perf_counter() > stop[0]:
                    return

        threads = [threading.Thread(target=caller, args=(i,), daemon=True) for i in range(n)]
        for t in threads:
            t.start()
        start.wait()  # every caller warmed up; the clock starts for all at once
        t0 = time.perf_counter()
        stop[0] = t0 + seconds
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        calls = sum(len(c) for c in lat)
        return calls * x.shape[0] / wall, [v for c in lat for v in c]


def protected_faces(bundle_dir: Path, n: int) -> list[np.ndarray]:
    """n aligned LFW faces through the bundle's own front-end (the edge's runner, fresh random inputs per
    face), each [1, C, H, W] in the wire dtype."""
    from .edge_bench import frontend
    from .edge_draw import load_faces

    fe = frontend(bundle_dir)
    return [fe.protect(f) for f in load_faces(n)]


def bench(bundle_dir: Path, args, progress=None) -> dict:
    from ppfr.protos.bundle import read_manifest

    manifest = read_manifest(bundle_dir)
    model = bundle_dir / (manifest.recognizer.path or "recognizer.onnx")
    if not model.is_file():
        raise OrtBenchError(f"{bundle_dir} has no recognizer model {model.name}")
    rows = [Row(model, s) for s in settings(args.workers)]
    dtype = {"tensor(float16)": np.float16}.get(rows[0].sessions[0].get_inputs()[0].type, np.float32)
    protected = protected_faces(bundle_dir, args.faces)
    batches = {b: batch_of(protected, b).astype(dtype) for b in (1, args.batch)}
    bar = progress(total=args.rounds * len(rows), desc=bundle_dir.name) if progress else None
    for r in range(args.rounds):
        k = r % len(rows)
        for row in rows[k:] + rows[:k]:  # rotate the order: no row always runs first or after another
            for b, x in batches.items():
                rate, lat = row.chunk(x, args.seconds, args.warmup)
                row.rate.setdefault(b, []).append(rate)
                if b == 1:
                    row.latency_ms += lat
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    base = rows[0]
    out = []
    for row in rows:
        entry = {
            "name": row.setting.name,
            "setting": asdict(row.setting),
            "batch1": summarize(row.latency_ms),
        }
        for b, rates in row.rate.items():
            ratios = [v / w for v, w in zip(rates, base.rate[b])]
            entry[f"faces_per_s_b{b}"] = round(float(np.median(rates)), 1)
            entry[f"faces_per_s_b{b}_vs_server"] = round(float(np.median(ratios)), 3)
        entry["p50_vs_server"] = round(
            entry["batch1"]["p50_ms"] / out[0]["batch1"]["p50_ms"] if out else 1.0, 3
        )
        out.append(entry)
    return {
        "bundle": str(bundle_dir),
        "method": manifest.method,
        "input": {"shape": list(batches[1].shape[1:]), "dtype": str(np.dtype(dtype))},
        "rows": out,
    }


def markdown(result: dict) -> str:
    b = result["batch"]
    lines = []
    for res in result["bundles"]:
        lines += [
            f"\n{res['bundle']} ({res['method']}, input {res['input']['shape']} {res['input']['dtype']})\n",
            f"| setting | b1 p50 ms | b1 p99 ms | b1 faces/s | b{b} faces/s | b1 p50 vs server "
            f"| b1 faces/s vs server | b{b} faces/s vs server |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in res["rows"]:
            lat = row["batch1"]
            lines.append(
                f"| {row['name']} | {lat['p50_ms']:.2f} | {lat['p99_ms']:.2f} | {row['faces_per_s_b1']:.0f} "
                f"| {row[f'faces_per_s_b{b}']:.0f} | {row['p50_vs_server']:.2f}x "
                f"| {row['faces_per_s_b1_vs_server']:.2f}x | {row[f'faces_per_s_b{b}_vs_server']:.2f}x |"
            )
    m = result["machine"]
    lines.append(
        f"\n{m['cpu_model']}, {m['usable_cores']} usable cores, onnxruntime {m['versions']['onnxruntime']}; "
        f"load average (1/5/15 min) at start {m['load_average_at_start']}, at end "
        f"{m['load_average_at_end']}; {result['rounds']} interleaved rounds of {result['seconds']} s per "
        f"row and batch; server = graph level all, intra-op 0 (one per core), sequential, 1 session, "
        f"1 caller (cloud/runtime.py)."
    )
    return "\n".join(lines).lstrip("\n") + "\n"


def parse_args(argv):
    p = argparse.ArgumentParser(prog="ppfr-bench ort-settings", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--bundle",
        action="append",
        default=[],
        help="bundle folder (repeatable; default: artifacts/dlib_ppfr_fd)",
    )
    p.add_argument("--rounds", type=int, default=8, help="interleaved rounds (default 8)")
    p.add_argument(
        "--seconds", type=float, default=0.5, help="timed seconds per row, batch and round (default 0.5)"
    )
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per caller before each chunk")
    p.add_argument("--batch", type=int, default=16, help="the larger batch (default 16)")
    p.add_argument(
        "--workers",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="N for the N-caller rows (default: the usable cores)",
    )
    p.add_argument("--faces", type=int, default=16, help="distinct LFW faces cycled (default 16)")
    p.add_argument("--out", default="runs/ort_settings", help="output folder (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if min(args.rounds, args.batch, args.workers, args.faces) < 1 or args.seconds <= 0 or args.warmup < 0:
        p.error("--rounds, --batch, --workers and --faces must be >= 1, --seconds > 0, --warmup >= 0")
    return args


def _progress():
    try:
        from tqdm import tqdm
    except ImportError:  # a cloud-only install: no bar
        return None
    return lambda **kw: tqdm(file=sys.stderr, leave=False, **kw)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    from ppfr.edge.errors import EdgeError
    from ppfr.protos.bundle import BundleError

    dirs = [Path(b) for b in args.bundle or ["artifacts/dlib_ppfr_fd"]]
    machine = describe()
    t0 = time.perf_counter()
    try:
        missing = [str(d) for d in dirs if not (d / "manifest.json").is_file()]
        if missing:
            raise OrtBenchError(f"not a bundle (no manifest.json): {', '.join(missing)} (make export)")
        progress = None if args.no_progress else _progress()
        results = [bench(d, args, progress) for d in dirs]
    except (OrtBenchError, BundleError, EdgeError, ValueError) as err:
        print(f"ppfr-bench ort-settings: error: {err}", file=sys.stderr)
        return 2
    machine["load_average_at_end"] = load_average()
    result = {
        "schema": "ppfr.bench.ort_settings.v1",
        "command": ["ppfr-bench", "ort-settings", *argv],
        "wall_s": round(time.perf_counter() - t0, 1),
        "rounds": args.rounds,
        "seconds": args.seconds,
        "batch": args.batch,
        "workers": args.workers,
        "machine": machine,
        "bundles": results,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ort_settings.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "ort_settings.md").write_text(markdown(result))
    print(markdown(result), end="")
    print(
        f"(written to {out}/ort_settings.json, ort_settings.md in {result['wall_s']:.0f} s)", file=sys.stderr
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
