"""Markdown results table from runs/*/metrics.json (docs/results.md is generated with it).

python -m ppfr.train.report runs/table_rgb runs/table_bdct ... [--baseline rgb]
"""

import argparse
import json
import sys
from pathlib import Path


def rows(run_dirs, eval_set: str = "lfw", baseline: str = "rgb") -> str:
    ms = []
    for d in run_dirs:
        f = Path(d) / "metrics.json"
        if f.is_file():
            ms.append(json.loads(f.read_text()))
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--eval-set", default="lfw")
    ap.add_argument("--baseline", default="rgb")
    args = ap.parse_args(argv)
    print(rows(args.runs, args.eval_set, args.baseline))
    return 0


if __name__ == "__main__":
    sys.exit(main())
