"""The verification figures and thresholds of a bundle.

The single-pair figures (LFW accuracy, TAR and threshold at FAR 1e-3) come from the run's metrics.json
only when the bundle is exported under the key the run was trained with (export/bundle.py compares key
ids); otherwise they are recomputed here on LFW View-2 pairs through the exported graphs themselves (ONNX
Runtime, one fresh random draw per face, no flip): exactly what the deployed edge + cloud compute.
`pooled` gives the FAR 1e-3 point of attempts against subjects enrolled from K photos, scored as the
server scores them (cloud/matrix.py, pooled_score); `by_template_count` does so for 1, 2 and 3+ photos.
"""

import hashlib
import json
from pathlib import Path

import numpy as np
from ppfr.data import DataError, lfw_pairs, lfw_people, read_faces

FAR = 1e-3
TEMPLATE_COUNTS = (1, 2, 3)  # thresholds for subjects with 1, 2 and 3+ templates
FARS = (FAR, 1e-2, 1e-4)  # the manifest's per-count thresholds (`ppfr-cloud serve --far` picks one)


class Memo:
    """`embed(faces)` that embeds each distinct face once (keyed by its pixels): the calibrations for 1,
    2 and 3 templates and the LFW pairs share most faces. Each face keeps its one protected draw."""

    def __init__(self, embed):
        self.embed, self.cache = embed, {}

    def __call__(self, images: np.ndarray) -> np.ndarray:
        keys = [hashlib.blake2b(face.tobytes(), digest_size=16).digest() for face in images]
        missing = {k: i for i, k in reversed(list(enumerate(keys))) if k not in self.cache}
        if missing:
            order = sorted(missing.values())
            for i, e in zip(order, self.embed(images[order])):
                self.cache[keys[i]] = e
        return np.stack([self.cache[k] for k in keys])


def from_metrics(path: Path, set_name: str = "lfw") -> dict | None:
    """Threshold entry of a run's metrics.json (ppfr.train.trainer) or None when there is none.

    Training reports `threshold_at_far_1e-03` with "accept iff score > t"; the bundle's threshold means
    "match iff cosine >= t", so it is moved up by one float step."""
    if not path.is_file():
        return None
    metrics = json.loads(path.read_text())
    entry = ((metrics.get("results") or {}).get(set_name) or {}).get("trained")
    if not entry or "threshold_at_far_1e-03" not in entry:
        return None
    return {
        "cosine": float(np.nextafter(entry["threshold_at_far_1e-03"], np.inf)),
        "far": FAR,
        "tar": float(entry.get("tar_at_far_1e-03", 0.0)),
        "accuracy": float(entry.get("accuracy_mean", 0.0)),
        "num_pairs": int(entry.get("num_pairs", 0)),
        "set": f"{set_name} (training evaluation: single image, one protected tensor per face)",
    }


def recompute(root: Path, embed, limit: int | None = None) -> dict:
    """Threshold at FAR 1e-3 on LFW pairs; `embed(faces uint8 NHWC) -> L2-normalised [N, D]`.

    Same definitions as training (ppfr.train.evaluate.verification_metrics)."""
    from ppfr.train.evaluate import verification_metrics

    pairs, same, fold = lfw_pairs(root, limit)
    names = sorted({p for pair in pairs for p in pair})
    index = {n: i for i, n in enumerate(names)}
    embs = []
    for start in range(0, len(names), 64):
        chunk = names[start : start + 64]
        embs.append(embed(read_faces(root / "lfw" / "aligned112" / n for n in chunk)))
    emb = np.concatenate(embs).astype(np.float64)
    a = np.array([index[p[0]] for p in pairs])
    b = np.array([index[p[1]] for p in pairs])
    scores = (emb[a] * emb[b]).sum(1)
    metrics = verification_metrics(scores, same, fold)
    thr = float(np.nextafter(metrics["threshold_at_far_1e-03"], np.inf))  # ">" -> ">=" (see from_metrics)
    set_name = "lfw-view2" if limit is None else f"lfw-view2 ({len(pairs)} of 6000 pairs, all folds)"
    return {
        "cosine": thr,
        "far": FAR,
        "tar": metrics["tar_at_far_1e-03"],
        "accuracy": metrics["accuracy_mean"],
        "num_pairs": len(pairs),
        "set": set_name + ", exported graphs",
    }


def by_template_count(root: Path, embed, max_people: int | None = None, fars=(FAR,)) -> list:
    """`pooled` entries for subjects with 1, 2 and 3+ templates (TEMPLATE_COUNTS order) at each of `fars`,
    each with its `templates` count. 3 at the first FAR first: its embeddings then draw exactly as a lone
    `pooled(root, embed, 3)` (give a `Memo` embed: the other entries reuse them)."""
    out = []
    for far in fars:
        per = {
            k: pooled(root, embed, k, None, max_people, far) for k in sorted(TEMPLATE_COUNTS, reverse=True)
        }
        out += [{**per[k], "templates": k} for k in TEMPLATE_COUNTS]
    return out


def pooled(
    root: Path,
    embed,
    enrolled: int,
    base: dict | None = None,
    max_people: int | None = None,
    far: float = FAR,
) -> dict:
    """Threshold at `far` for subjects enrolled from `enrolled` photos, scored by the cosine of the probe
    to the mean of their templates, as the server does (cloud/matrix.py, pooled_score): pooling raises
    every score, impostors' too, so a threshold from single pairs lets more impostors in.

    LFW people with more than `enrolled` aligned crops (see `pooled_people`). `embed(faces uint8 NHWC) ->
    L2-normalised [N, D]`. `base` (the single-pair entry) lends its accuracy figure, which pooling does
    not define."""
    lfw = root / "lfw" / "aligned112"
    people = [[lfw / c for c in crops] for crops in lfw_people(lfw, enrolled + 1).values()][:max_people]
    entry = pooled_people(people, embed, enrolled, far, str(lfw))
    return {
        **entry,
        "accuracy": float((base or {}).get("accuracy", 0.0)),
        "set": (
            f"lfw aligned112: {entry['subjects']} subjects enrolled from {enrolled} photos each, scored "
            f"pooled as the server does; {entry['genuine']} genuine and {entry['impostor']} impostor "
            "attempts, exported graphs"
        ),
    }


def pooled_people(people: list, embed, enrolled: int, far: float, where: str) -> dict:
    """The FAR `far` point of attempts against subjects enrolled from `enrolled` photos, pooled.

    `people`: per person, its aligned 112x112 crops (paths); those with more than `enrolled` count. The
    first `enrolled` are the subject's templates, the next (up to two) its genuine probes, and every
    probe is an impostor attempt against every other subject."""
    people = [crops[: enrolled + 2] for crops in people if len(crops) > enrolled]
    if len(people) < 2:
        raise DataError(f"{where}: fewer than 2 people with more than {enrolled} crops")
    paths = [c for crops in people for c in crops]
    emb = np.concatenate([embed(read_faces(paths[i : i + 64])) for i in range(0, len(paths), 64)])
    emb = emb.astype(np.float64)
    means, probes, owner, start = [], [], [], 0
    for i, crops in enumerate(people):
        mean = emb[start : start + enrolled].mean(0)
        means.append(mean / max(np.linalg.norm(mean), 1e-12))
        probes.append(emb[start + enrolled : start + len(crops)])
        owner += [i] * (len(crops) - enrolled)
        start += len(crops)
    scores = np.concatenate(probes) @ np.stack(means).T  # [probe, subject]
    mine = np.arange(len(people))[None, :] == np.array(owner)[:, None]
    genuine, impostor = scores[mine], scores[~mine]
    thr = float(np.nextafter(np.quantile(impostor, 1 - far), np.inf))
    return {
        "cosine": thr,
        "far": far,
        "tar": float(np.mean(genuine >= thr)),
        "num_pairs": int(genuine.size + impostor.size),
        "subjects": len(people),
        "genuine": int(genuine.size),
        "impostor": int(impostor.size),
    }
