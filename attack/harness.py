"""One attack run: split, judges and thresholds, then per bundle inversion + linkage (+ key renewal)."""

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import data as D
from .inversion import reconstruct, train_inversion
from .judges import BundleJudge, DlibJudge, cached_embed, teacher_targets
from .linkage import predict, train_linkage
from .metrics import normalise, psnr, ssim, threshold_at_far
from .server_view import Bundle
from .whitebox import rekeyed, whitebox_frontend

FAR = 1e-3


@dataclass
class Config:
    data: Path = D.DEFAULT_DATA
    out: Path = Path("runs/attack")
    runs: Path = Path("runs")
    n_victims: int = 30
    n_calib: int = 150
    max_attacker: int | None = None
    link_images: int = 2000
    steps: int = 150
    batch: int = 32
    lr: float = 2e-3
    widths: tuple = (16, 32, 64)
    res: int = 28
    link_steps: int = 80
    white_box: bool = False
    threads: int = 1
    seed: int = 0
    judges: list = field(default_factory=lambda: ["dlib", "rgb"])
    rgb_judge: Path | None = None


class Judged:
    """One judge: embeddings of the originals, its FAR threshold, and scoring of attacker outputs."""

    def __init__(self, judge, split, victims, calib, cfg):
        self.judge = judge
        paths = split.victim_paths + split.calib_paths
        emb = cached_embed(judge, paths, np.concatenate([victims, calib]), cfg.out / "cache")
        self.ids = np.array(split.victim_ids + split.calib_ids)
        self.orig = emb
        self.nv = len(victims)
        sims = emb @ emb.T
        iu = np.triu_indices(len(emb), 1)
        diff = self.ids[iu[0]] != self.ids[iu[1]]
        self.impostor = sims[iu][diff]
        self.threshold = threshold_at_far(self.impostor, FAR)
        self.partner = np.arange(self.nv) ^ 1  # (2k, 2k+1) are the same person

    def score(self, queries: np.ndarray) -> dict:
        """Match rate of queries (one per victim image) against the other photo of the same person at the
        judge's threshold, their false-match rate against every original of a different person, and the
        match rate at a threshold set so that the queries themselves false-match at FAR 1e-3 (this matters
        for linkage outputs, which crowd around the mean embedding and so pass the judge's threshold
        against strangers too)."""
        q = normalise(queries)
        sims = q @ self.orig.T
        genuine = sims[np.arange(self.nv), self.partner]
        other = self.ids[None, :] != self.ids[: self.nv, None]
        own = threshold_at_far(sims[other], FAR)  # the attack output's own FAR 1e-3 threshold
        return {
            "match_rate": float((genuine > self.threshold).mean()),
            "false_match_rate": float((sims[other] > self.threshold).mean()),
            "match_rate_at_own_far": float((genuine > own).mean()),
            "own_threshold_cosine": own,
            "mean_genuine_cosine": float(genuine.mean()),
        }

    def describe(self) -> dict:
        return {
            "threshold_cosine": self.threshold,
            "far_target": FAR,
            "measured_far": float((self.impostor > self.threshold).mean()),
            "impostor_pairs": int(self.impostor.size),
        }


def make_judges(cfg, split, victims, calib, bundles) -> dict:
    judges = {}
    if "dlib" in cfg.judges:
        judges["dlib"] = Judged(DlibJudge(), split, victims, calib, cfg)
    if "rgb" in cfg.judges:
        rgb = cfg.rgb_judge or next((b.path for b in bundles if b.method == "rgb"), None)
        if rgb is not None:
            judges["rgb"] = Judged(BundleJudge(rgb, cfg.threads), split, victims, calib, cfg)
    return judges


def judge_targets(name, judged, cfg, paths, faces) -> np.ndarray:
    """The judge's embeddings of the linkage training faces (dlib: shared teacher cache if present)."""
    if name == "dlib":
        t = teacher_targets(cfg.data, paths)
        if t is not None:
            return t
    return cached_embed(judged.judge, paths, faces, cfg.out / "cache")


def attack_frontend(label, frontend, method, attacker, victims, judges, link, cfg) -> dict:
    link_faces, targets = link
    rng = np.random.default_rng(cfg.seed + 12345)  # victim queries: their own fresh randomness
    seen = frontend.protect(victims, rng)
    net, info = train_inversion(frontend, attacker, cfg, cfg.seed, desc=f"{label}: inversion")
    recon = reconstruct(net, seen)
    a, b = victims.astype(np.float64) / 255, recon.astype(np.float64) / 255
    row = {
        "name": label,
        "method": method,
        "protected_shape": list(seen.shape[1:]),
        "psnr": float(psnr(a, b).mean()),
        "ssim": float(ssim(a, b).mean()),
        "inversion": info,
        "judges": {},
    }
    for jname, judged in judges.items():
        r = judged.score(judged.judge.embed(recon, desc=f"{label}: {jname} on reconstructions"))
        lnet, linfo = train_linkage(
            frontend,
            link_faces,
            targets[jname],
            cfg.link_steps,
            cfg.batch,
            cfg.lr,
            cfg.seed,
            f"{label}: linkage",
        )
        lk = judged.score(predict(lnet, seen))
        row["judges"][jname] = {"reconstruction": r, "linkage": lk, "linkage_training": linfo}
    return row, seen, recon


def key_renewal(bundle, victims, calib, split) -> dict:
    """Templates (the bundle's recognizer embeddings) of the same people under the bundle's key and a new
    key, both embedded by the deployed recognizer; threshold at FAR 1e-3 on same-key impostor pairs."""
    rng = np.random.default_rng(7)
    faces = np.concatenate([victims, calib])
    t1 = normalise(bundle.embed(bundle.protect(faces, rng)))
    other, new_id = rekeyed(bundle)
    t2 = normalise(bundle.embed(other.protect(victims, rng)))
    ids = np.array(split.victim_ids + split.calib_ids)
    sims = t1 @ t1.T
    iu = np.triu_indices(len(t1), 1)
    thr = threshold_at_far(sims[iu][ids[iu[0]] != ids[iu[1]]], FAR)
    nv = len(victims)
    partner = np.arange(nv) ^ 1
    cross = t1[:nv] @ t2.T
    same = sims[:nv, :nv]
    diff = ids[:nv, None] != ids[None, :nv]
    return {
        "new_key_id": new_id,
        "old_key_id": bundle.params.get("key_id", ""),
        "threshold_cosine": thr,
        "same_key_match_rate": float((same[np.arange(nv), partner] > thr).mean()),
        "cross_key_match_rate": float((cross[np.arange(nv), partner] > thr).mean()),
        "cross_key_same_photo_match_rate": float((np.diag(cross) > thr).mean()),
        "cross_key_false_match_rate": float((cross[diff] > thr).mean()),
        "pairs": f"{nv} victim images vs the other photo of the same person; impostor pairs from "
        f"{len(faces)} originals",
    }


def references(judges, victims, attacker) -> list:
    mean_face = np.repeat(attacker.mean(0, keepdims=True), len(victims), 0).round().astype(np.uint8)
    a = victims.astype(np.float64) / 255
    rows = []
    for label, faces in (("raw faces (ceiling)", victims), ("mean attacker face (floor)", mean_face)):
        row = {"name": label, "method": "reference", "judges": {}}
        row["psnr"] = float(psnr(a, faces.astype(np.float64) / 255).mean()) if faces is not victims else None
        row["ssim"] = float(ssim(a, faces.astype(np.float64) / 255).mean())
        for jname, judged in judges.items():
            emb = (
                judged.orig[: judged.nv] if faces is victims else judged.judge.embed(faces[:1], desc="floor")
            )
            emb = np.repeat(emb, len(victims), 0) if len(emb) == 1 else emb
            row["judges"][jname] = {"reconstruction": judged.score(emb)}
        rows.append(row)
    return rows, mean_face


def run(bundle_dirs, cfg: Config) -> dict:
    torch.set_num_threads(cfg.threads)
    t0 = time.time()
    bundles = [Bundle(p, cfg.threads) for p in bundle_dirs]
    split = D.make_split(cfg.data, cfg.n_victims, cfg.n_calib, cfg.max_attacker, cfg.seed)
    attacker = D.load_faces(split.attacker_paths)
    victims, calib = D.load_faces(split.victim_paths), D.load_faces(split.calib_paths)
    judges = make_judges(cfg, split, victims, calib, bundles)
    pick = np.random.default_rng(cfg.seed).permutation(len(attacker))[: cfg.link_images]
    pick.sort()
    link_paths = [split.attacker_paths[i] for i in pick]
    link = (
        attacker[pick],
        {n: judge_targets(n, j, cfg, link_paths, attacker[pick]) for n, j in judges.items()},
    )
    ref_rows, mean_face = references(judges, victims, attacker)
    rows, grid = [], []
    for b in bundles:
        row, seen, recon = attack_frontend(b.name, b, b.method, attacker, victims, judges, link, cfg)
        if b.method == "ppfr_fd":
            row["key_renewal"] = key_renewal(b, victims, calib, split)
        rows.append(row)
        grid.append((b.name, seen, recon))
        if cfg.white_box and b.method != "rgb":
            label = f"{b.name} (white-box)"
            wrow, wseen, wrecon = attack_frontend(
                label, whitebox_frontend(b, cfg.runs), b.method, attacker, victims, judges, link, cfg
            )
            rows.append(wrow)
            grid.append((label, wseen, wrecon))
    return {
        "split": split.describe(),
        "victim_images": [str(p) for p in split.victim_paths],
        "judges": {n: {"name": j.judge.name, **j.describe()} for n, j in judges.items()},
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(cfg).items()},
        "references": ref_rows,
        "results": rows,
        "wall_seconds": round(time.time() - t0, 1),
        "_grid": (victims, mean_face, grid),
    }
