"""Verification evaluation: single-image embeddings as deployed (flip-summed as an extra), 10-fold
accuracy, TAR at fixed FAR, ROC.

Programmatic API (export recomputes its threshold with it):
    emb = embed_faces(method, recognizer, images_uint8, seed=0)
    metrics = verification_metrics(scores, same, folds)
CLI: ppfr-eval --checkpoint runs/<name>/checkpoint.pt [--pairs ... --root ... | --bin ...]
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

FARS = (1e-2, 1e-3)


@torch.no_grad()
def embed_views(
    method, recognizer, images, seed: int = 0, batch_size: int = 128, flip: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """(single, flip_sum) L2-normalised embeddings [N,D] of uint8 NHWC faces.

    single: f(x), one protected tensor per face, exactly what the server embeds (the headline figures
    and the manifest threshold). flip_sum: f(x) + f(hflip(x)), the flip in pixel space (before
    protection: flipping a BDCT tensor is not the same), an extra column. Random inputs come from one
    torch generator seeded with `seed`, so stochastic methods evaluate reproducibly. flip=False: single
    only (half the work; flip_sum is None)."""
    was = method.training, recognizer.training
    method.eval()
    recognizer.eval()
    device = method.device()
    gen = torch.Generator(device=device).manual_seed(seed)
    single, both = [], []
    try:
        for i in range(0, len(images), batch_size):
            x = torch.from_numpy(np.array(images[i : i + batch_size], dtype=np.uint8)).to(
                device
            )  # copy: mmap is read-only
            views = (x, x.flip(2)) if flip else (x,)
            out = [recognizer(method(v, **method.sample_random(len(v), gen))).float() for v in views]
            single.append(F.normalize(out[0], dim=1).cpu())
            if flip:
                both.append(F.normalize(out[0] + out[1], dim=1).cpu())
    finally:
        method.train(was[0])
        recognizer.train(was[1])
    return torch.cat(single).numpy(), torch.cat(both).numpy() if flip else None


def embed_faces(method, recognizer, images, seed: int = 0, batch_size: int = 128, flip: bool = False):
    """L2-normalised embeddings: single view (as deployed), or flip-summed with flip=True."""
    return embed_views(method, recognizer, images, seed, batch_size)[1 if flip else 0]


def best_threshold(scores: np.ndarray, same: np.ndarray) -> float:
    """Threshold maximising accuracy of 'same iff score > t' (exact: every gap between sorted scores)."""
    order = np.argsort(scores, kind="stable")
    s, y = scores[order], same[order]
    # Threshold below sorted item i accepts items i..n-1: correct = negatives before i + positives from i.
    neg_before = np.concatenate([[0], np.cumsum(~y)])
    pos_from = np.concatenate([np.cumsum(y[::-1])[::-1], [0]])
    correct = neg_before + pos_from
    i = int(np.argmax(correct))
    if i == 0:
        return float(s[0] - 1e-6)
    if i == len(s):
        return float(s[-1] + 1e-6)
    return float(0.5 * (s[i - 1] + s[i]))


def kfold_accuracy(scores, same, folds) -> tuple[np.ndarray, np.ndarray]:
    """Per-fold accuracy with the threshold chosen on the other folds, and those thresholds."""
    scores, same, folds = np.asarray(scores, float), np.asarray(same, bool), np.asarray(folds)
    accs, thrs = [], []
    for k in np.unique(folds):
        test = folds == k
        t = best_threshold(scores[~test], same[~test])
        accs.append(np.mean((scores[test] > t) == same[test]))
        thrs.append(t)
    return np.array(accs), np.array(thrs)


def tar_at_far(scores, same, far: float) -> tuple[float, float]:
    """(TAR, threshold): accept iff score > threshold, the threshold letting at most far * #negatives pass."""
    scores, same = np.asarray(scores, float), np.asarray(same, bool)
    neg = np.sort(scores[~same])[::-1]
    k = int(np.floor(far * len(neg)))
    thr = float(neg[k]) if k < len(neg) else float(neg[-1] - 1e-6)
    return float(np.mean(scores[same] > thr)), thr


def roc_curve(scores, same) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-np.asarray(scores, float), kind="stable")
    y = np.asarray(same, bool)[order]
    tpr = np.concatenate([[0], np.cumsum(y) / max(y.sum(), 1)])
    fpr = np.concatenate([[0], np.cumsum(~y) / max((~y).sum(), 1)])
    return fpr, tpr


def verification_metrics(scores, same, folds=None, n_folds: int = 10) -> dict:
    """10-fold accuracy (mean, std over folds), TAR at FAR 1e-2 / 1e-3 and the cosine threshold at 1e-3."""
    scores, same = np.asarray(scores, float), np.asarray(same, bool)
    if folds is None:  # KFold(shuffle=False): consecutive blocks
        folds = np.arange(len(scores)) * n_folds // len(scores)
    accs, thrs = kfold_accuracy(scores, same, folds)
    out = {
        "accuracy_mean": float(accs.mean()),
        "accuracy_std": float(accs.std()),
        "fold_accuracies": [float(a) for a in accs],
        "best_threshold_mean": float(thrs.mean()),
        "num_pairs": int(len(scores)),
        "num_same": int(same.sum()),
    }
    for far in FARS:
        tar, thr = tar_at_far(scores, same, far)
        out[f"tar_at_far_{far:.0e}"] = tar
        out[f"threshold_at_far_{far:.0e}"] = thr
    return out


def evaluate_pairs(
    method, recognizer, pairs, seed: int = 0, batch_size: int = 128, flip: bool = True
) -> tuple[dict, np.ndarray]:
    """Metrics of one PairSet (data.PairSet) and the cosine scores (flip=False: no flip_sum column)."""
    single, flip_sum = embed_views(method, recognizer, pairs.images, seed, batch_size, flip)
    scores = np.sum(single[pairs.first] * single[pairs.second], axis=1)
    metrics = verification_metrics(scores, pairs.same, pairs.folds)
    metrics.update(seed=seed, view="single image, one protected tensor per face (as the server embeds)")
    if flip:
        fs_scores = np.sum(flip_sum[pairs.first] * flip_sum[pairs.second], axis=1)
        extra = verification_metrics(fs_scores, pairs.same, pairs.folds)
        metrics["flip_sum"] = {k: v for k, v in extra.items() if k.startswith(("accuracy", "tar_at"))}
    return metrics, scores


def plot_roc(curves: dict, path, title: str = "ROC") -> None:
    """curves: label -> (scores, same). Log-FAR ROC as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
    for label, (scores, same) in curves.items():
        fpr, tpr = roc_curve(scores, same)
        ax.plot(np.maximum(fpr, 1e-4), tpr, label=label)
    ax.set(xscale="log", xlim=(1e-4, 1), ylim=(0, 1), xlabel="FAR", ylabel="TAR", title=title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def format_row(name: str, m: dict) -> str:
    return (
        f"{name}: acc {100 * m['accuracy_mean']:.2f} +- {100 * m['accuracy_std']:.2f}  "
        f"TAR@1e-3 {100 * m['tar_at_far_1e-03']:.2f}  TAR@1e-2 {100 * m['tar_at_far_1e-02']:.2f}"
        + (f"  (flip-sum acc {100 * m['flip_sum']['accuracy_mean']:.2f})" if "flip_sum" in m else "")
    )


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="ppfr-eval", description="Verification accuracy of a trained checkpoint"
    )
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--pairs", help="pairs.txt (LFW View-2 form); default: the config's eval sets")
    ap.add_argument("--root", help="folder the pairs.txt paths are relative to")
    ap.add_argument("--bin", help="InsightFace verification .bin instead of pairs.txt")
    ap.add_argument("--name", default=None)
    ap.add_argument("--max-pairs", type=int, default=None)
    ap.add_argument(
        "--seed", type=int, default=None, help="random inputs of stochastic methods (default: config)"
    )
    ap.add_argument(
        "--key-file",
        default=None,
        help="evaluate under this deployment key (PPFR-FD; or $PPFR_METHOD_KEY), as a bundle made with it "
        "would run; a checkpoint from `ppfr-train rekey` needs its key",
    )
    ap.add_argument("--out", default=None, help="JSON output (default: next to the checkpoint)")
    ap.add_argument("--no-flip", action="store_true", help="skip the flip-sum column (half the time)")
    return ap


def _rekeyed(config: dict, method, key_file):
    """(config, method) under the key in key_file or $PPFR_METHOD_KEY, as a bundle exported with it
    would run; a checkpoint sealed to a deployment key (keys.seal) needs that key."""
    from .cli import deployment_key
    from .data import DataError
    from .keys import ENV_VAR, KeyPolicyError, is_keyed, sealed_key_id, unseal

    sealed = sealed_key_id(config.get("method", {}))
    try:
        if not is_keyed(method.name):
            if key_file:
                raise KeyPolicyError(f"--key-file: method {method.name!r} has no key")
            return config, method
        key = deployment_key(key_file)
        if key is not None:
            return unseal(config, method, key.key)
        if sealed is not None:
            raise KeyPolicyError(
                f"this checkpoint is adapted to method key id {sealed}: pass --key-file or set {ENV_VAR}"
            )
        return config, method
    except KeyPolicyError as err:
        raise DataError(str(err)) from None


def _eval_sets(args, config: dict) -> list:
    """The pair sets to evaluate: --bin, --pairs with --root, or the config's eval sets."""
    from .data import DataError, load_bin, load_eval_set, load_pairs

    cache = config.get("data", {}).get("cache")
    if args.bin:
        return [load_bin(args.name or Path(args.bin).stem, args.bin, args.max_pairs)]
    if args.pairs:
        if not args.root:
            raise DataError("--pairs needs --root (the folder its image paths are relative to)")
        return [load_pairs(args.name or "pairs", args.pairs, args.root, cache, args.max_pairs)]
    specs = config.get("data", {}).get("eval", [])
    limit = {"max_pairs": args.max_pairs} if args.max_pairs else {}
    return [load_eval_set(dict(s, **limit), cache) for s in specs]


def main(argv=None) -> int:
    from .data import DataError
    from .model import load_checkpoint

    args = _parser().parse_args(argv)
    try:
        config, method, recognizer, _ = load_checkpoint(args.checkpoint)
        config, method = _rekeyed(config, method, args.key_file)
        seed = args.seed if args.seed is not None else config.get("eval", {}).get("seed", 0)
        sets = _eval_sets(args, config)
    except (DataError, FileNotFoundError) as err:
        print(f"ppfr-eval: error: {err}", file=sys.stderr)
        return 2
    results, curves = {}, {}
    for ps in sets:
        m, scores = evaluate_pairs(method, recognizer, ps, seed, flip=not args.no_flip)
        results[ps.name] = m
        curves[ps.name] = (scores, ps.same)
        print(format_row(ps.name, m))
    out = Path(args.out) if args.out else Path(args.checkpoint).with_name("eval.json")
    out.write_text(json.dumps(results, indent=2))
    plot_roc(curves, out.with_suffix(".png"), title=config.get("name", "ROC"))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
