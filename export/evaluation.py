"""The verification figures and thresholds of a bundle.

The single-pair figures (LFW accuracy, TAR and threshold at FAR 1e-3) come from the run's metrics.json
only when the bundle is exported under the key the run was trained with (export/bundle.py compares key
ids); otherwise they are recomputed here on LFW View-2 pairs through the exported graphs themselves (ONNX
Runtime, one fresh random draw per face, no flip): exactly what the deployed edge + cloud compute.
`pooled` gives the FAR 1e-3 point of attempts against subjects enrolled from K photos, scored as the
server scores them (ppfr.bundle.calibration, the math `ppfr-export calibrate` and `ppfr-edge calibrate`
share); `by_template_count` does so for 1, 2 and 3+ photos. They calibrate on every LFW person with two
or more aligned crops except the people of View-2 folds 1-2, whose raw photos are `ppfr-bench
raw-pairs`' end-to-end test: the threshold that test checks is not fitted to its people.
"""

import hashlib
import json
from pathlib import Path

import numpy as np
from ppfr.bundle import calibration
from ppfr.data import lfw_pairs, lfw_people, read_faces, read_pairs

FAR = 1e-3
TEMPLATE_COUNTS = calibration.TEMPLATE_COUNTS  # thresholds for subjects with 1, 2 and 3+ templates
FARS = (FAR, 1e-2, 1e-4)  # the manifest's per-count thresholds (`ppfr-cloud serve --far` picks one)
HELD_OUT_FOLDS = (0, 1)  # View-2 folds 1-2 (0-based): raw-pairs' test people, never calibrated on
# Fresh front-end draws per crop: the server sees a fresh draw per request. (For ppfr_fd the recognizer's
# energy sort undoes Shuffle2, so draws change embeddings by < 3e-5; methods with noise or subsets differ.)
DRAWS = 2


class Memo:
    """`embed(faces, draw=0)` that embeds each distinct face once per draw (keyed by its pixels): the
    calibrations for 1, 2 and 3 templates and the LFW pairs share most faces. Each (face, draw) keeps its
    one protected draw; another `draw` index protects the face again with fresh random inputs."""

    def __init__(self, embed):
        self.embed, self.cache = embed, {}

    def __call__(self, images: np.ndarray, draw: int = 0) -> np.ndarray:
        keys = [(hashlib.blake2b(face.tobytes(), digest_size=16).digest(), draw) for face in images]
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


def held_out_people(root: Path) -> set[str]:
    """The people of LFW View-2 folds HELD_OUT_FOLDS: their raw photos are `ppfr-bench raw-pairs`' test
    (../shared/data/lfw/raw250), so no threshold is calibrated on them (View-2 folds share no person)."""
    pairs, folds = read_pairs(Path(root) / "lfw" / "pairs.txt")
    return {
        name.split("/")[0] for (a, b, _), f in zip(pairs, folds) if f in HELD_OUT_FOLDS for name in (a, b)
    }


def calibration_people(
    root: Path, max_people: int | None = None, photos: int = calibration.PHOTOS
) -> list[list[Path]]:
    """LFW people with two or more aligned crops, outside the held-out folds, each with its first `photos`
    crops; `max_people` keeps the first that many (quick bundles)."""
    lfw = Path(root) / "lfw" / "aligned112"
    held = held_out_people(root)
    people = [
        [lfw / c for c in crops[:photos]] for name, crops in lfw_people(lfw, 2).items() if name not in held
    ]
    return people[:max_people]


def embed_people(people: list[list[Path]], embed, draws: int = DRAWS) -> list[np.ndarray]:
    """Per person its crops' embeddings [photos, draws, D]: `embed(faces, draw)` (a `Memo`, or any
    `embed(faces)` that draws fresh random inputs per call) once per draw."""
    paths = [c for crops in people for c in crops]
    faces = [read_faces(paths[i : i + 64]) for i in range(0, len(paths), 64)]
    per_draw = [
        np.concatenate([_embed(embed, chunk, d) for chunk in faces]).astype(np.float32) for d in range(draws)
    ]
    emb = np.stack(per_draw, 1)  # [photos, draws, D]
    bounds = np.cumsum([0] + [len(crops) for crops in people])
    return [emb[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def _embed(embed, faces: np.ndarray, draw: int) -> np.ndarray:
    return embed(faces, draw) if isinstance(embed, Memo) else embed(faces)


def by_template_count(root: Path, embed, max_people: int | None = None, fars=(FAR,), draws: int = DRAWS):
    """Entries for subjects with 1, 2 and 3+ templates (TEMPLATE_COUNTS order) at each of `fars`, each
    with its `templates` count, on `calibration_people` (ppfr.bundle.calibration.entries)."""
    people = calibration_people(root, max_people)
    found = calibration.entries(embed_people(people, embed, draws), fars, str(root / "lfw" / "aligned112"))
    return [_lfw_entry(e) for e in found]


def pooled(
    root: Path,
    embed,
    enrolled: int,
    base: dict | None = None,
    max_people: int | None = None,
    far: float = FAR,
    draws: int = DRAWS,
) -> dict:
    """Threshold at `far` for subjects enrolled from `enrolled` photos, scored by the cosine of the probe
    to the mean of their templates, as the server does (cloud/matrix.py, pooled_score): pooling raises
    every score, impostors' too, so a threshold from single pairs lets more impostors in.

    `calibration_people` with up to `enrolled` + PROBES crops each. `embed(faces uint8 NHWC) ->
    L2-normalised [N, D]`. `base` (the single-pair entry) lends its accuracy figure, which pooling does
    not define."""
    people = calibration_people(root, max_people, enrolled + calibration.PROBES)
    where = str(root / "lfw" / "aligned112")
    entry = calibration.pooled_point(embed_people(people, embed, draws), enrolled, far, where)
    return {
        **_lfw_entry({**entry, "templates": enrolled}),
        "accuracy": float((base or {}).get("accuracy", 0.0)),
    }


def _lfw_entry(entry: dict) -> dict:
    """An entry with the evaluation set it was calibrated on, in words (the manifest's `evaluation_set`)."""
    return {
        **entry,
        "accuracy": 0.0,
        "set": (
            f"lfw aligned112 without the people of View-2 folds 1-2 (raw-pairs' test): {entry['subjects']} "
            f"subjects enrolled from {entry['templates']} photos each, scored pooled as the server does; "
            f"{entry['genuine']} genuine and {entry['impostor']} impostor attempts, {entry['draws']} draw(s) "
            "per photo, exported graphs"
        ),
    }
