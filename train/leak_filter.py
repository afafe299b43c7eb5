"""Keeps evaluation people out of unlabeled training faces.

UTKFace was scraped from the web and may hold people who are also in LFW or CFP. Before training on it
we drop every face whose pretrained-teacher embedding is a near-match to any evaluation image: cosine
above the threshold at which the teacher accepts a fraction `far` of impostor pairs (different LFW
people, sampled). At far=1e-5 and ~15k evaluation images an innocent face is dropped with probability
~15%, a price worth paying for figures that no leak inflates. The result is cached by content.
"""

import hashlib
import json
import time
from pathlib import Path

import numpy as np
from ppfr.data import read_pairs

from .data import load_cfp, load_pairs, load_unlabeled, resolve


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def impostor_threshold(emb: np.ndarray, names: list[str], far: float, pairs: int = 4_000_000) -> float:
    """Cosine above which a fraction `far` of random different-identity pairs lie."""
    rng = np.random.default_rng(0)
    ident = np.unique(np.array(names), return_inverse=True)[1]
    a, b = rng.integers(0, len(emb), pairs), rng.integers(0, len(emb), pairs)
    keep = ident[a] != ident[b]
    e = _unit(emb)
    scores = np.concatenate(
        [
            np.sum(e[a[keep][i : i + 500_000]] * e[b[keep][i : i + 500_000]], 1)
            for i in range(0, keep.sum(), 500_000)
        ]
    )
    return float(np.quantile(scores, 1.0 - far))


def max_similarity(cand: np.ndarray, ref: np.ndarray, chunk: int = 4096) -> np.ndarray:
    c, r = _unit(cand).astype(np.float32), _unit(ref).astype(np.float32)
    return np.concatenate([(c[i : i + chunk] @ r.T).max(1) for i in range(0, len(c), chunk)])


def filter_unlabeled(spec: dict, eval_specs: list[dict], cache_dir, far: float = 1e-5) -> dict:
    """{'keep': [file names], 'dropped': [...], 'threshold': t, ...} for the unlabeled folder spec['root']
    against every LFW pairs.txt / CFP set in eval_specs. Cached in cache_dir."""
    from .dlib_resnet import embed_crops, load_dlib_resnet

    root = resolve(spec["root"])
    # Always against whole evaluation sets: a run that evaluates on a subset must not train on the rest.
    eval_specs = [{k: v for k, v in s.items() if k != "max_pairs"} for s in eval_specs]
    sources = sorted(json.dumps(s, sort_keys=True) for s in eval_specs)
    key = hashlib.sha1(json.dumps([str(root), sources, far, spec.get("max_images")]).encode()).hexdigest()[
        :16
    ]
    cache = resolve(cache_dir) / f"leak_filter-{key}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    t0 = time.time()
    net = load_dlib_resnet()
    images, files = load_unlabeled(root, cache_dir, spec.get("max_images"))
    ref, lfw_emb, lfw_names = [], None, None
    for s in eval_specs:
        if "cfp" in s:
            ps = load_cfp(s["name"], s["cfp"], s.get("protocol", "FP"), cache_dir)
        elif "pairs" in s:
            ps = load_pairs(s["name"], s["pairs"], s["root"], cache_dir)
        else:
            continue
        emb = embed_crops(net, ps.images, progress=f"teacher: {s['name']}")
        ref.append(emb)
        if "pairs" in s and lfw_emb is None:  # identities from the pair list: impostor statistics
            plist, _ = read_pairs(resolve(s["pairs"]))
            uniq = sorted({p for a, b, _ in plist for p in (a, b)})
            lfw_emb, lfw_names = emb, [u.split("/")[0] for u in uniq]
    if lfw_emb is None:
        raise ValueError("the leak filter needs an LFW-style pairs.txt eval set for its impostor threshold")
    thr = impostor_threshold(lfw_emb, lfw_names, far)
    cand = embed_crops(net, images, progress=f"teacher: {root.name}")
    best = max_similarity(cand, np.concatenate(ref))
    drop = best > thr
    out = {
        "root": str(root),
        "far": far,
        "threshold": thr,
        "faces": len(files),
        "dropped_count": int(drop.sum()),
        "keep": [f for f, d in zip(files, drop) if not d],
        "dropped": [f for f, d in zip(files, drop) if d],
        "eval_images": int(sum(len(r) for r in ref)),
        "seconds": round(time.time() - t0, 1),
    }
    cache.parent.mkdir(parents=True, exist_ok=True)
    Path(cache).write_text(json.dumps(out))
    return out
