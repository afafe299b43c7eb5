"""`ppfr-bench edge-draw`: the edge's per-query step (random draw + frontend.onnx + serialized VerifyRequest),
batch 1, one ONNX Runtime thread, with the edge's ChaCha20 drawer ("after") and with the per-element
OS-CSPRNG drawer it replaced ("before"), side by side in one run.

The two variants are interleaved in rounds (before, after, after, before, ...) on the same FrontEnd and
faces, so a change of load during the run hits both alike. The "before" drawer is kept here only as the
benchmark's baseline: os.urandom for every Laplace word and uniform integer, Fisher-Yates over
secrets.randbelow for permutations, as ppfr.edge.randomness did up to issue 16.

    ppfr-bench edge-draw                                   # artifacts/dlib_* bundles, every method
    ppfr-bench edge-draw --bundle artifacts/dlib_dctdp --iters 3000
"""

import argparse
import json
import math
import os
import secrets
import sys
from pathlib import Path

import numpy as np

from .edge_bench import wire_request
from .machine import describe, load_average
from .stats import summarize, time_calls

REPO = Path(__file__).resolve().parents[1]
FACES = REPO.parent / "shared" / "data" / "lfw" / "aligned112"
METHODS = ("rgb", "bdct", "ppfr_fd", "dctdp", "partialface")
TARGETS = {"dctdp": {"p50_ms": 0.5, "p99_ms": 2.0}}  # issue 16; and every method: p99 <= 3x p50
TAIL_RATIO = 3.0


class DrawBenchError(RuntimeError):
    pass


# --- the baseline: what the edge drew before issue 16 (one OS read per word, Python Fisher-Yates) -----
def _os_words(count: int) -> np.ndarray:
    return np.frombuffer(os.urandom(8 * count), dtype="<u8").copy()


def _os_permutation(n: int) -> np.ndarray:
    perm = np.arange(n, dtype=np.int64)
    for i in range(n - 1, 0, -1):
        j = secrets.randbelow(i + 1)
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def _os_uniform_int(low: int, high: int, count: int) -> np.ndarray:
    span = high - low
    limit = (2**64 // span) * span
    out = np.empty(0, dtype=np.uint64)
    while out.size < count:
        words = _os_words(2 * (count - out.size) + 8)
        if limit < 2**64:
            words = words[words < np.uint64(limit)]
        out = np.concatenate([out, words])
    return (out[:count] % np.uint64(span)).astype(np.int64) + low


def _os_laplace(loc: float, scale: float, count: int) -> np.ndarray:
    u = ((_os_words(count) >> np.uint64(12)).astype(np.float64) + 0.5) * 2.0**-52 - 0.5
    return loc - scale * np.sign(u) * np.log1p(-2.0 * np.abs(u))


def os_draw_all(specs, batch: int = 1) -> dict[str, np.ndarray]:
    from google.protobuf import json_format
    from ppfr.protos.bundle import numpy_dtype

    out = {}
    for spec in specs:
        params = json_format.MessageToDict(spec.params) if spec.HasField("params") else {}
        shape = (batch, *(int(s) for s in spec.shape))
        count = math.prod(shape)
        if spec.distribution == "permutation":
            values = np.stack([_os_permutation(shape[-1]) for _ in range(batch)])
        elif spec.distribution == "uniform_int":
            values = _os_uniform_int(int(params["low"]), int(params["high"]), count).reshape(shape)
        else:
            loc, scale = float(params.get("loc", 0.0)), float(params.get("scale", 1.0))
            values = _os_laplace(loc, scale, count).reshape(shape)
        out[spec.name] = np.ascontiguousarray(values, dtype=numpy_dtype(spec.data_type))
    return out


# --- the measurement ------------------------------------------------------------------------------------
def load_faces(n: int) -> np.ndarray:
    """n aligned uint8 RGB LFW faces (different people), or seeded noise faces where the data is absent:
    the front-end's cost does not depend on the picture."""
    if FACES.is_dir():
        import cv2

        people = sorted(p for p in FACES.iterdir() if p.is_dir())[:: max(1, len(os.listdir(FACES)) // n)]
        faces = []
        for person in people[:n]:
            bgr = cv2.imread(str(sorted(person.glob("*.jpg"))[0]))
            if bgr is not None and bgr.shape == (112, 112, 3):
                faces.append(np.ascontiguousarray(bgr[:, :, ::-1]))
        if faces:
            return np.stack(faces)
    return np.random.default_rng(0).integers(0, 256, (n, 112, 112, 3), dtype=np.uint8)


def bench_bundle(bundle_dir: Path, faces: np.ndarray, iters: int, rounds: int, warmup: int) -> dict:
    from ppfr.edge.frontend import FrontEnd

    fe = FrontEnd(bundle_dir, threads=1)
    specs = fe.manifest.random_inputs
    new_draw = fe.random_inputs  # the edge's own drawer, bound before we override it for "before"
    draws = {"before": lambda: os_draw_all(specs, batch=1), "after": new_draw}
    it = {"i": 0}

    def step():  # what the edge does per query after alignment: draw, run the graph, serialize
        it["i"] += 1
        wire_request(fe, fe.protect(faces[it["i"] % len(faces)]))

    samples = {v: {"draw": [], "step": []} for v in draws}
    per_round = max(1, iters // rounds)
    for r in range(rounds):
        for variant in ("before", "after") if r % 2 == 0 else ("after", "before"):
            fe.random_inputs = draws[variant]  # FrontEnd.protect draws through this attribute
            samples[variant]["draw"] += time_calls(draws[variant], warmup, per_round, 1e9)
            samples[variant]["step"] += time_calls(step, warmup, per_round, 1e9)
    fe.random_inputs = new_draw
    out = {
        "bundle": str(bundle_dir),
        "method": fe.manifest.method,
        "random_inputs": [f"{s.name}:{s.distribution}{list(s.shape)}" for s in specs],
    }
    for variant, s in samples.items():
        out[variant] = {"random_draw": summarize(s["draw"]), "frontend_draw_serialize": summarize(s["step"])}
    return out


def verdict(row: dict) -> str:
    step = row["after"]["frontend_draw_serialize"]
    notes = []
    if step["p99_ms"] > TAIL_RATIO * step["p50_ms"]:
        notes.append(f"p99 > {TAIL_RATIO:g}x p50")
    for key, limit in TARGETS.get(row["method"], {}).items():
        if step[key] > limit:
            notes.append(f"{key[:3]} > {limit} ms")
    return "ok" if not notes else "MISSED: " + ", ".join(notes)


def markdown(result: dict) -> str:
    lines = [
        "| method | random inputs | draw p50 ms before / after | step p50 ms before / after "
        "| step p99 ms before / after | p99/p50 after | target |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["bundles"]:
        b, a = row["before"], row["after"]
        bd, ad = b["random_draw"], a["random_draw"]
        bs, as_ = b["frontend_draw_serialize"], a["frontend_draw_serialize"]
        lines.append(
            f"| {row['method']} | {', '.join(row['random_inputs']) or '-'} "
            f"| {bd['p50_ms']:.3f} / {ad['p50_ms']:.3f} "
            f"| {bs['p50_ms']:.3f} / {as_['p50_ms']:.3f} | {bs['p99_ms']:.3f} / {as_['p99_ms']:.3f} "
            f"| {as_['p99_ms'] / as_['p50_ms']:.2f} | {verdict(row)} |"
        )
    m = result["machine"]
    lines.append(
        f"\n{m['cpu_model']}, {m['usable_cores']} usable cores; load average (1/5/15 min) at start "
        f"{m['load_average_at_start']}, at end {m['load_average_at_end']}; "
        f"{result['iters']} timed calls per variant in {result['rounds']} interleaved rounds."
    )
    return "\n".join(lines) + "\n"


def find(args) -> list[Path]:
    if args.bundle:
        dirs = [Path(b) for b in args.bundle]
        missing = [str(d) for d in dirs if not (d / "manifest.json").is_file()]
        if missing:
            raise DrawBenchError(f"not a bundle (no manifest.json): {', '.join(missing)}")
        return dirs
    from ppfr.protos.bundle import BundleError, read_manifest

    artifacts = Path(args.artifacts)
    found = {}
    for d in sorted(artifacts.glob(f"{args.prefix}*/")) if artifacts.is_dir() else []:
        try:
            method = read_manifest(d).method
        except BundleError:
            continue
        found.setdefault(method, d)  # the first by name: dlib_ppfr_fd before dlib_ppfr_fd_stage1
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    dirs = [found[m] for m in methods if m in found]
    if not dirs:
        wanted = ", ".join(methods)
        raise DrawBenchError(f"no {args.prefix}* bundles of {wanted} in {artifacts}/ (make export)")
    return dirs


def parse_args(argv):
    p = argparse.ArgumentParser(prog="ppfr-bench edge-draw", description=__doc__.split("\n\n")[0])
    p.add_argument("--artifacts", default="artifacts", help="folder of bundles (default: artifacts)")
    p.add_argument("--prefix", default="dlib_", help="bundle folder prefix to pick (default: dlib_)")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods (default: all five)")
    p.add_argument("--bundle", action="append", default=[], help="bench this bundle folder (repeatable)")
    p.add_argument("--iters", type=int, default=2000, help="timed calls per variant (default 2000)")
    p.add_argument("--rounds", type=int, default=10, help="interleaved rounds (default 10)")
    p.add_argument("--warmup", type=int, default=20, help="untimed calls before each round (default 20)")
    p.add_argument("--faces", type=int, default=16, help="distinct aligned faces to cycle (default 16)")
    p.add_argument("--out", default="runs/bench/edge_draw.json", help="JSON result (default: %(default)s)")
    args = p.parse_args(argv)
    if args.iters < 1 or args.rounds < 1 or args.warmup < 0 or args.faces < 1:
        p.error("--iters, --rounds and --faces must be >= 1, --warmup >= 0")
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    from ppfr.edge.errors import EdgeError

    try:
        dirs = find(args)
        machine = describe()
        faces = load_faces(args.faces)
        rows = []
        for d in dirs:
            print(f"[edge-draw] {d} ...", file=sys.stderr, flush=True)
            rows.append(bench_bundle(d, faces, args.iters, args.rounds, args.warmup))
    except (DrawBenchError, EdgeError, ValueError) as err:
        print(f"ppfr-bench edge-draw: error: {err}", file=sys.stderr)
        return 2
    machine["load_average_at_end"] = load_average()
    result = {
        "schema": "ppfr.bench.edge_draw.v1",
        "command": ["ppfr-bench", "edge-draw", *argv],
        "iters": args.iters,
        "rounds": args.rounds,
        "machine": machine,
        "bundles": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(markdown(result), end="")
    print(f"(written to {out})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
