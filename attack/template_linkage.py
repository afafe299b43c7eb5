"""Linkability of stored templates across keys and deployments (issue 15, items 3-5), on LFW View-2.

    python -m ppfr.attack.template_linkage --bundle artifacts/dlib_ppfr_fd \\
        --other runs/unlinkability/dlib_ppfr_fd_keyB --out runs/unlinkability

`--bundle` and `--other` are two exports of one trained run under two PPFR-FD keys (`ppfr-export
--key-file`), so they share recognizer.onnx and differ in the front-end's Shuffle1. Every image of the
LFW pairs is protected (fresh random inputs per image, numpy PCG64) and embedded once per bundle, as
the server would; the embeddings are cached in <out>/cache.

Templates compared (score = cosine):
- plain, same key: the deployed system (accuracy, TAR at FAR 1e-3, D<->sys as the linkability scale);
- plain, cross key: bundle's template vs other's template;
- renewable (cloud/template_key.py), same secret: Q1 e vs Q1 e' (accuracy must not move);
- renewable, two secrets, same front-end: Q1 e vs Q2 e';
- cross deployment: other key and other secret: Q1 e_bundle vs Q2 e_other.

Alignment attack (what D<->sys of the score comparison does not see): an attacker holding two whole
galleries estimates the map between them from their statistics alone. An orthogonal transform keeps the
spectrum of the templates' second-moment matrix and rotates its eigenvectors, so the eigenvectors of
gallery 1 and gallery 2 (signs fixed by each gallery's mean) give R = U1 U2^T, and R Q2 e ~ Q1 e.
Reported with the statistics taken from every template of both galleries (the same people in both) and
from disjoint halves of the people (no one in common).

Mated pairs: (a) "other photo" = the 3,000 same-person pairs of pairs.txt (first image under system 1,
second under system 2); (b) "same photo" = every image of the pairs under both systems. Non-mated: the
3,000 different-person pairs of pairs.txt. D<->sys (attack/unlinkability.py, omega = 1) by KDE and by
histogram, with the estimator's floor (two halves of the non-mated scores). Template secrets are drawn
fresh from the OS (`secrets`) for every run and never written; only their ids are reported.
"""

import argparse
import json
import secrets
import sys
import time
from pathlib import Path

import numpy as np
from ppfr.data import data_root, lfw_pairs, read_faces

from .server_view import Bundle
from .unlinkability import dsys, null_dsys


def _embed_all(
    bundle: Bundle, root: Path, names: list[str], cache: Path, seed: int, batch: int
) -> np.ndarray:
    m = bundle.manifest
    tag = f"{m.frontend.sha256[:12]}_{m.recognizer.sha256[:12]}_s{seed}"
    path = cache / f"lfw_{tag}.npz"
    if path.is_file():
        data = np.load(path, allow_pickle=False)
        if list(data["names"]) == names:
            return data["emb"]
    rng = np.random.default_rng(seed)
    out, t0 = [], time.time()
    for i in range(0, len(names), batch):
        faces = read_faces(root / "lfw" / "aligned112" / n for n in names[i : i + batch])
        out.append(bundle.embed(bundle.protect(faces, rng, batch), batch))
        done = i + len(faces)
        print(f"  {bundle.path}: {done}/{len(names)} images, {time.time() - t0:.0f} s", flush=True)
    emb = np.concatenate(out).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, names=np.array(names), emb=emb)
    return emb


def align_galleries(x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    """The attacker's estimate R of the map from gallery 2's frame to gallery 1's (see the docstring)."""

    def basis(x):
        _, u = np.linalg.eigh(x.T.astype(np.float64) @ x / len(x))
        u = u[:, ::-1]
        sign = np.sign(u.T @ x.mean(0))
        return u * np.where(sign == 0, 1.0, sign)[None, :]

    return basis(x1) @ basis(x2).T


def _aligned(x1, x2, stats1, stats2) -> np.ndarray:
    y = x2 @ align_galleries(x1[stats1], x2[stats2]).T
    return (y / np.linalg.norm(y, axis=1, keepdims=True)).astype(np.float32)


def _unlink(mated, nonmated) -> dict:
    return {
        "dsys_kde": dsys(mated, nonmated, estimator="kde"),
        "dsys_hist": dsys(mated, nonmated, estimator="hist"),
        "mated_mean": float(np.mean(mated)),
        "nonmated_mean": float(np.mean(nonmated)),
        "num_mated": int(len(mated)),
        "num_nonmated": int(len(nonmated)),
    }


def _rates(mated, nonmated, thr: float) -> dict:
    return {
        "mated_match_rate": float(np.mean(np.asarray(mated) >= thr)),
        "nonmated_match_rate": float(np.mean(np.asarray(nonmated) >= thr)),
    }


class _Scorer:
    """Scores of the LFW pairs between two template sets, and one system's figures."""

    def __init__(self, names: list[str], pair_list, same: np.ndarray, folds: np.ndarray, thr: float):
        index = {n: i for i, n in enumerate(names)}
        self.i1 = np.array([index[p[0]] for p in pair_list])
        self.i2 = np.array([index[p[1]] for p in pair_list])
        self.same, self.folds, self.thr = same, folds, thr

    def scores(self, x, y):
        return np.sum(x[self.i1] * y[self.i2], axis=1)

    def split(self, s):
        return s[self.same], s[~self.same]

    def system(self, x, y) -> dict:
        """One pair of template sets: verification figures, linkage (other photo, same photo)."""
        from ppfr.train.evaluate import verification_metrics

        s = self.scores(x, y)
        m, n = self.split(s)
        same_photo = np.sum(x * y, axis=1)
        row = {
            "other_photo": {**_unlink(m, n), **_rates(m, n, self.thr)},
            "same_photo": {**_unlink(same_photo, n), **_rates(same_photo, n, self.thr)},
        }
        v = verification_metrics(s, self.same, self.folds)
        row["verification"] = {k: v[k] for k in ("accuracy_mean", "accuracy_std", "tar_at_far_1e-03")}
        return row


def _ids(m) -> dict:
    p = m.method_params
    return {
        "frontend_id": m.frontend_id[:16],
        "key_id": p["key_id"] if "key_id" in p else "",
        "demo_key": bool(p["demo_key"]) if "demo_key" in p else None,
    }


def measure(
    bundle: Path, other: Path, root: Path, out: Path, pairs: int | None, n_secrets: int, seed: int
) -> dict:
    a, b = Bundle(bundle), Bundle(other)
    if a.manifest.method != b.manifest.method:
        raise SystemExit("ppfr.attack.template_linkage: the two bundles are of different methods")
    pair_list, same, folds = lfw_pairs(root, pairs)
    names = sorted({p for pr in pair_list for p in pr})
    t0 = time.time()
    ea = _embed_all(a, root, names, out / "cache", seed, 64)
    eb = _embed_all(b, root, names, out / "cache", seed + 1, 64)
    embed_s = time.time() - t0
    thr = float(a.manifest.threshold.cosine)
    sc = _Scorer(names, pair_list, same, folds, thr)
    floor = sc.split(sc.scores(ea, ea))[1]
    return {
        "bundle": str(bundle),
        "other": str(other),
        "bundle_ids": _ids(a.manifest),
        "other_ids": _ids(b.manifest),
        "same_recognizer": a.manifest.recognizer.sha256 == b.manifest.recognizer.sha256,
        "threshold_cosine": thr,
        "threshold_source": a.manifest.threshold.evaluation_set,
        "pairs": {"total": len(pair_list), "mated": int(same.sum()), "nonmated": int((~same).sum())},
        "images": len(names),
        "embed_seconds": round(embed_s, 1),
        "estimator_floor": {
            "dsys_kde": null_dsys(floor, estimator="kde"),
            "dsys_hist": null_dsys(floor, estimator="hist"),
            "what": "D<->sys between two random halves of the same-key non-mated scores (same distribution)",
        },
        "plain_same_key": sc.system(ea, ea),
        "plain_same_key_other": sc.system(eb, eb),
        "plain_cross_key": sc.system(ea, eb),
        "renewable": _renewable(sc, ea, eb, names, n_secrets, seed),
    }


def _renewable(sc: _Scorer, ea, eb, names: list[str], n_secrets: int, seed: int) -> dict:
    """Renewable templates: n_secrets fresh pairs of secrets (never stored), their ids only."""
    from ppfr.cloud.template_key import TemplateTransform, template_key_id

    d = ea.shape[1]
    same_secret, two_secrets, cross_deploy, max_dev, key_ids = [], [], [], 0.0, []
    people = np.array([n.split("/")[0] for n in names])
    half = set(np.random.default_rng(seed).permutation(np.unique(people))[: len(np.unique(people)) // 2])
    first = np.array([p in half for p in people])
    everyone = np.ones(len(names), bool)
    attack = {}
    for _ in range(n_secrets):
        s1, s2 = secrets.token_bytes(32), secrets.token_bytes(32)
        t1, t2 = TemplateTransform(s1, d), TemplateTransform(s2, d)
        key_ids.append([template_key_id(s1), template_key_id(s2)])
        qa1 = t1.apply(ea)
        same_secret.append(sc.system(qa1, qa1))
        max_dev = max(max_dev, float(np.max(np.abs(sc.scores(qa1, qa1) - sc.scores(ea, ea)))))
        qa2, qb2 = t2.apply(ea), t2.apply(eb)
        two_secrets.append(sc.system(qa1, qa2))
        cross_deploy.append(sc.system(qa1, qb2))
        if not attack:  # the alignment does not depend on the secrets (it is rotation-equivariant)
            for label, x2 in (("two_secrets", qa2), ("cross_deployment", qb2)):
                attack[label] = {
                    "stats_all_templates": sc.system(qa1, _aligned(qa1, x2, everyone, everyone)),
                    "stats_disjoint_people": sc.system(qa1, _aligned(qa1, x2, first, ~first)),
                }
    return {
        "secret_pairs": n_secrets,
        "secret_ids": key_ids,
        "same_secret": _summary(same_secret),
        "same_secret_max_abs_score_change": max_dev,
        "two_secrets": _summary(two_secrets),
        "cross_deployment": _summary(cross_deploy),
        "alignment_attack": attack,
    }


def _summary(rows: list[dict]) -> dict:
    """Mean and max over secret pairs of every figure (nested dicts of floats)."""

    def walk(items):
        first = items[0]
        if isinstance(first, dict):
            return {k: walk([r[k] for r in items]) for k in first}
        vals = np.array(items, dtype=float)
        return {"mean": float(vals.mean()), "max": float(vals.max())}

    return walk(rows)


def _pct(x) -> str:
    return f"{100 * x:.1f}%"


def report(res: dict) -> str:
    def row(label, r, view, stat=None):
        v = r[view]
        get = (lambda k: v[k][stat]) if stat else (lambda k: v[k])
        ver = r["verification"]
        acc = ver["accuracy_mean"][stat] if stat else ver["accuracy_mean"]
        return (
            f"| {label} | {view.replace('_', ' ')} | {get('dsys_kde'):.3f} | {get('dsys_hist'):.3f} | "
            f"{_pct(get('mated_match_rate'))} | {_pct(get('nonmated_match_rate'))} | {_pct(acc)} |"
        )

    lines = [
        "| templates compared | mated = | D<->sys (KDE) | D<->sys (hist) | mated >= thr | non-mated >= thr | "
        "LFW acc (10-fold) |",
        "|---|---|---|---|---|---|---|",
    ]
    # same key / same secret: "same photo" would compare an embedding with itself, so only "other photo"
    for label, key in (
        ("plain, same key (bundle)", "plain_same_key"),
        ("plain, same key (other key)", "plain_same_key_other"),
        ("plain, cross PPFR-FD key", "plain_cross_key"),
    ):
        for view in ("other_photo", "same_photo") if key == "plain_cross_key" else ("other_photo",):
            lines.append(row(label, res[key], view))
    ren = res["renewable"]
    for label, key in (
        ("renewable, same secret (mean)", "same_secret"),
        ("renewable, two secrets (mean)", "two_secrets"),
        ("renewable, two secrets (max)", "two_secrets"),
        ("cross deployment: key + secret (mean)", "cross_deployment"),
    ):
        stat = "max" if "(max)" in label else "mean"
        for view in ("other_photo",) if key == "same_secret" else ("other_photo", "same_photo"):
            lines.append(row(label, ren[key], view, stat))
    for key, what in (("two_secrets", "two secrets"), ("cross_deployment", "key + secret")):
        for stats, how in (
            ("stats_all_templates", "same people"),
            ("stats_disjoint_people", "disjoint people"),
        ):
            label = f"alignment attack on {what} ({how})"
            for view in ("other_photo", "same_photo"):
                lines.append(row(label, ren["alignment_attack"][key][stats], view))
    f = res["estimator_floor"]
    lines += [
        "",
        f"Threshold {res['threshold_cosine']:.4f} (the bundle's, FAR 1e-3). Pairs: "
        f"{res['pairs']['mated']} mated, {res['pairs']['nonmated']} non-mated from pairs.txt; "
        f"{res['images']} images per bundle. Estimator floor (identical distributions): D<->sys "
        f"{f['dsys_kde']:.3f} (KDE), {f['dsys_hist']:.3f} (hist). Renewable same secret: largest score "
        f"change {ren['same_secret_max_abs_score_change']:.1e} over {ren['secret_pairs']} secret pairs.",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m ppfr.attack.template_linkage", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "--bundle", type=Path, required=True, help="bundle under key 1 (e.g. artifacts/dlib_ppfr_fd)"
    )
    p.add_argument("--other", type=Path, required=True, help="the same run exported under key 2")
    p.add_argument("--data", type=Path, help="face data (default $PPFR_DATA/data or ../shared/data)")
    p.add_argument("--out", type=Path, default=Path("runs/unlinkability"))
    p.add_argument("--pairs", type=int, help="LFW pairs (default all 6,000; equal share per fold)")
    p.add_argument("--secrets", type=int, default=10, help="pairs of fresh template secrets (10)")
    p.add_argument("--seed", type=int, default=0, help="seed of the per-image random inputs")
    args = p.parse_args(argv)
    res = measure(
        args.bundle, args.other, data_root(args.data), args.out, args.pairs, args.secrets, args.seed
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "template_linkage.json").write_text(json.dumps(res, indent=1))
    text = report(res)
    (args.out / "template_linkage.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
