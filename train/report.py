"""Markdown results table from runs/*/metrics.json (docs/results.md is generated with it).

python -m ppfr.train.report runs/dlib_rgb runs/dlib_bdct ... [--baseline rgb] [--plot docs/results.png]
    [--bundles artifacts]
"""

import argparse
import json
import sys
from pathlib import Path


def load(run_dirs) -> list[dict]:
    return [json.loads(f.read_text()) for f in (Path(d) / "metrics.json" for d in run_dirs) if f.is_file()]


def _acc(m: dict, eval_set: str, key: str = "accuracy_mean", flip: bool = False):
    r = (m["results"].get(eval_set) or {}).get("trained")
    if r is None or (flip and "flip_sum" not in r):
        return None
    return 100 * (r["flip_sum"] if flip else r)[key]


def server_cost(config: dict) -> tuple[float, float]:
    """(parameters in millions, GFLOPs per face) of the recognizer the config builds (server side)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from .model import build_model

    method, recognizer = build_model(config, pretrained=False)
    recognizer.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        recognizer(torch.zeros(1, *method.output_shape()))
    return sum(p.numel() for p in recognizer.parameters()) / 1e6, counter.get_total_flops() / 1e9


def onnx_ms(bundle: Path, runs: int = 50) -> float | None:
    """Median ONNX Runtime CPU latency of recognizer.onnx at batch 1 (all cores, as the server runs it)."""
    import time

    import numpy as np
    from ppfr.bundle import session

    path = bundle / "recognizer.onnx"
    if not path.is_file():
        return None
    sess = session(path)
    inp = sess.get_inputs()[0]
    dtype = np.float16 if "float16" in inp.type else np.float32
    x = np.random.default_rng(0).standard_normal([1, *inp.shape[1:]]).astype(dtype)
    for _ in range(5):
        sess.run(None, {inp.name: x})
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, {inp.name: x})
        times.append(1000 * (time.perf_counter() - t))
    return float(np.median(times))


def rows(ms: list[dict], eval_set: str = "lfw", baseline: str = "rgb", bundles=None) -> str:
    """Headline: single image, one protected tensor per face (as deployed); flip-summed as an extra."""
    base = next((m for m in ms if m["method"] == baseline), None)

    def cell(v, fmt="{:.2f}"):
        return "-" if v is None else fmt.format(v)

    def delta(m, s):
        a, b = _acc(m, s), _acc(base, s) if base else None
        return "n/a" if a is None or b is None else f"{a - b:+.2f}"

    out = [
        f"| method | run | steps | {eval_set.upper()} acc (%) | flip-sum (%) | TAR@FAR=1e-3 (%) | delta vs "
        f"{baseline} | CFP-FP (%) | delta | CFP-FF (%) | payload B (fp16) | params (M) | GFLOPs "
        "| ORT CPU b=1 (ms) | train time |",
        "|" + "---|" * 15,
    ]
    for m in ms:
        t = m["results"][eval_set]["trained"]
        params, gflops = server_cost(m["config"])
        ms_b1 = onnx_ms(Path(bundles) / m["name"]) if bundles else None
        out.append(
            f"| {m['method']} | {m['name']} | {m['train']['steps']} | {100 * t['accuracy_mean']:.2f} ± "
            f"{100 * t['accuracy_std']:.2f} | {cell(_acc(m, eval_set, flip=True))} "
            f"| {100 * t['tar_at_far_1e-03']:.2f} | {delta(m, eval_set)} | {cell(_acc(m, 'cfp_fp'))} "
            f"| {delta(m, 'cfp_fp')} | {cell(_acc(m, 'cfp_ff'))} | {m['payload_bytes_float16']:,} "
            f"| {params:.2f} | {gflops:.2f} | {cell(ms_b1, '{:.1f}')} "
            f"| {m['train']['seconds'] / 60:.1f} min |"
        )
    return "\n".join(out)


def plot(ms: list[dict], path, eval_set: str = "lfw") -> None:
    """Accuracy per run (trained next to init) and accuracy against payload size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = [m["results"][eval_set] for m in ms]
    acc = [100 * r["trained"]["accuracy_mean"] for r in res]
    std = [100 * r["trained"]["accuracy_std"] for r in res]
    x = range(len(ms))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.bar([i - 0.2 for i in x], acc, 0.4, yerr=std, label="trained")
    if all("init" in r for r in res):
        init = [100 * r["init"]["accuracy_mean"] for r in res]
        left.bar([i + 0.2 for i in x], init, 0.4, color="0.7", label="at init (same seed)")
    left.set_xticks(list(x), [m["name"] for m in ms], rotation=20, ha="right")
    left.set_ylim(45, 100)
    left.set_ylabel(f"{eval_set.upper()} 10-fold accuracy (%)")
    left.legend()
    for m, a in zip(ms, acc):
        right.scatter(m["payload_bytes_float16"], a)
        right.annotate(m["name"], (m["payload_bytes_float16"], a), textcoords="offset points", xytext=(5, 3))
    right.set_xscale("log")
    right.set_xlabel("payload bytes per face (fp16)")
    right.set_ylabel(f"{eval_set.upper()} accuracy (%)")
    right.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--eval-set", default="lfw")
    ap.add_argument("--baseline", default="rgb")
    ap.add_argument("--plot", default=None, help="also write a PNG: accuracy per run and against payload")
    ap.add_argument("--bundles", default=None, help="exported bundles (artifacts/): adds ONNX Runtime ms")
    args = ap.parse_args(argv)
    ms = [m for m in load(args.runs) if args.eval_set in m["results"]]
    if not ms:
        print(f"no metrics.json with a '{args.eval_set}' result in the given folders", file=sys.stderr)
        return 2
    print(rows(ms, args.eval_set, args.baseline, args.bundles))
    if args.plot:
        plot(ms, args.plot, args.eval_set)
    return 0


if __name__ == "__main__":
    sys.exit(main())
