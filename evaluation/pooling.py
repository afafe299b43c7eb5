"""`ppfr-bench pooling`: what enrolling several photos per person buys at the bundle's threshold, and how
a subject's score should combine its templates (the server pools them: cloud/matrix.py, pooled_score).

LFW people with at least k+1 aligned crops: the first k are enrolled, the next (up to two) are genuine
probes, and every probe is also an impostor probe against every other person enrolled. For each k and
each rule, prints the genuine probes accepted and the impostor probes rejected at the bundle's threshold,
and the genuine accepted at the threshold that rule needs for FAR 1e-3 and 1e-2 of these impostor
comparisons. Rules: `best` (the best template), `mean-cos` (the mean of the cosines), `pooled` (the cosine
to the templates' mean, what the server does). Embeddings go through the bundle's frontend.onnx (fresh
random inputs per face) and recognizer.onnx, as in deployment, and are cached per bundle.

    ppfr-bench pooling --bundle artifacts/NAME [--enroll 1,3,5] [--out runs/pooling/NAME.json]
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from ppfr.bundle import Bundle, Seeded
from ppfr.data import data_path, lfw_people, read_rgb


def best(gallery: np.ndarray, probes: np.ndarray) -> np.ndarray:
    return (probes @ gallery.T).max(1)


def mean_cos(gallery: np.ndarray, probes: np.ndarray) -> np.ndarray:
    return (probes @ gallery.T).mean(1)


def pooled(gallery: np.ndarray, probes: np.ndarray) -> np.ndarray:
    mean = gallery.mean(0)
    return probes @ (mean / np.linalg.norm(mean))


RULES = {"best": best, "mean-cos": mean_cos, "pooled": pooled}


def embed_people(bundle_dir: Path, root: Path, names: list[str], cache: Path) -> np.ndarray:
    """L2-normalised embeddings of these crops through the bundle, cached per front-end and recognizer."""
    bundle = Bundle(bundle_dir, threads=2)
    path = cache / f"{bundle.manifest.recognizer.sha256[:12]}_{bundle.manifest.frontend.sha256[:12]}.npz"
    if path.is_file():
        cached = np.load(path)
        if list(cached["names"]) == names:
            return cached["emb"]
    rng, out = Seeded(0), []  # reproducible draws: the same embeddings for the same bundle
    for i in range(0, len(names), 256):
        faces = np.stack([read_rgb(root / n) for n in names[i : i + 256]])
        out.append(bundle.embed(bundle.protect(faces, rng)))
        print(f"  embedded {i + len(faces)}/{len(names)} faces", file=sys.stderr, flush=True)
    emb = np.concatenate(out).astype(np.float64)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, names=np.array(names), emb=emb)
    return emb


def measure(people: dict[str, list[str]], emb: dict[str, np.ndarray], k: int, threshold: float) -> list[dict]:
    enrolled = [n for n, crops in people.items() if len(crops) >= k + 1]
    galleries = [np.stack([emb[c] for c in people[n][:k]]) for n in enrolled]
    probes = [np.stack([emb[c] for c in people[n][k : k + 2]]) for n in enrolled]
    rows = []
    for rule, score in RULES.items():
        genuine, impostor = [], []
        for i, gallery in enumerate(galleries):
            genuine.append(score(gallery, probes[i]))
            others = np.concatenate([p for j, p in enumerate(probes) if j != i])
            impostor.append(score(gallery, others))
        genuine, impostor = np.concatenate(genuine), np.concatenate(impostor)
        row = {"enrolled": k, "rule": rule, "people": len(enrolled), "genuine": len(genuine)}
        row |= {"impostor": len(impostor), "accepted": float(np.mean(genuine >= threshold))}
        row["rejected"] = float(np.mean(impostor < threshold))
        for far in (1e-3, 1e-2):
            t = float(np.quantile(impostor, 1 - far))
            row[f"tar_at_far_{far:.0e}"], row[f"threshold_at_far_{far:.0e}"] = float(np.mean(genuine > t)), t
        rows.append(row)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="ppfr-bench pooling", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True, help="an exported bundle (artifacts/NAME)")
    parser.add_argument("--enroll", default="1,3,5", help="photos enrolled per person (default 1,3,5)")
    parser.add_argument("--lfw", default=str(data_path("lfw", "aligned112")), help="LFW aligned crops")
    parser.add_argument("--out", help="JSON results (default runs/pooling/<bundle>.json)")
    args = parser.parse_args(argv)
    bundle, root = Path(args.bundle), Path(args.lfw)
    try:
        counts = sorted({int(k) for k in args.enroll.split(",")})
        if not counts or counts[0] < 1:
            raise ValueError
    except ValueError:
        parser.error(f"--enroll takes positive counts like 1,3,5, not {args.enroll!r}")
    if not (bundle / "manifest.json").is_file():
        parser.error(f"{bundle} is not a bundle (no manifest.json): run `make export` first")
    if not root.is_dir():
        parser.error(f"LFW crops not found at {root} (is ../shared/data beside the repository?)")
    threshold = json.loads((bundle / "manifest.json").read_text())["threshold"]["cosine"]
    people = lfw_people(root, counts[0] + 1)
    names = [c for crops in people.values() for c in crops]
    out = Path(args.out or Path("runs") / "pooling" / f"{bundle.name}.json")
    emb = dict(zip(names, embed_people(bundle, root, names, out.parent / ".cache")))
    rows = [row for k in counts for row in measure(people, emb, k, threshold)]
    print(f"{bundle}: threshold {threshold:.4f}; LFW aligned crops, <= 2 genuine probes per person")
    print("enrolled  rule      people  genuine  impostor   accepted  rejected | TAR@FAR1e-3  TAR@FAR1e-2")
    for r in rows:
        print(
            f"{r['enrolled']:8d}  {r['rule']:8s}  {r['people']:6d}  {r['genuine']:7d}  {r['impostor']:8d}"
            f"   {r['accepted']:7.1%}  {r['rejected']:7.2%} |  {r['tar_at_far_1e-03']:9.1%}"
            f"  {r['tar_at_far_1e-02']:10.1%}"
        )
    out.write_text(json.dumps({"bundle": str(bundle), "threshold": threshold, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
