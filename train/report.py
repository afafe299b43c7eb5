"""Markdown results table from runs/*/metrics.json (docs/results.md is generated with it).

python -m ppfr.train.report runs/table_rgb runs/table_bdct ... [--baseline rgb] [--plot docs/results.png]
"""

import argparse
import json
import sys
from pathlib import Path


def load(run_dirs) -> list[dict]:
    return [json.loads(f.read_text()) for f in (Path(d) / "metrics.json" for d in run_dirs) if f.is_file()]


def rows(ms: list[dict], eval_set: str = "lfw", baseline: str = "rgb") -> str:
    base = next((m for m in ms if m["method"] == baseline), None)
    base_acc = base["results"][eval_set]["trained"]["accuracy_mean"] if base else None
    out = [
        f"| method | run | steps | {eval_set.upper()} 10-fold acc (%) | at init (%) | gain "
        "| TAR@FAR=1e-3 (%) "
        f"| delta vs {baseline} | payload bytes/face (fp16) | pairs | train time |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in ms:
        r = m["results"][eval_set]
        t, i = r["trained"], r.get("init")
        delta = f"{100 * (t['accuracy_mean'] - base_acc):+.2f}" if base_acc is not None else "n/a"
        init = f"{100 * i['accuracy_mean']:.2f} ± {100 * i['accuracy_std']:.2f}" if i else "-"
        gain = f"{100 * r['delta_accuracy']:+.2f}" if "delta_accuracy" in r else "-"
        out.append(
            f"| {m['method']} | {m['name']} | {m['train']['steps']} | {100 * t['accuracy_mean']:.2f} ± "
            f"{100 * t['accuracy_std']:.2f} | {init} | {gain} | {100 * t['tar_at_far_1e-03']:.2f} | {delta} "
            f"| {m['payload_bytes_float16']:,} | {t['num_pairs']} | {m['train']['seconds'] / 60:.1f} min |"
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
    args = ap.parse_args(argv)
    ms = [m for m in load(args.runs) if args.eval_set in m["results"]]
    if not ms:
        print(f"no metrics.json with a '{args.eval_set}' result in the given folders", file=sys.stderr)
        return 2
    print(rows(ms, args.eval_set, args.baseline))
    if args.plot:
        plot(ms, args.plot, args.eval_set)
    return 0


if __name__ == "__main__":
    sys.exit(main())
