"""One attack run: split, judges and thresholds, then per bundle inversion + linkage (+ key renewal).

Linkage is FaceLinkGen's attack (a pretrained face model fine-tuned to map protected tensors to the
clean face's embedding, on the attacker's own faces). That is exactly how every bundle's recognizer was
trained (`ppfr-train`: dlib's pretrained ResNet, online distillation to the same net's embedding of the
clean face, CelebA + leak-filtered UTKFace, identity-disjoint from the LFW victims), so the bundle's
recognizer *is* that attacker's model: its embedding of a victim's protected query is compared with the
judge's embedding of a clean photo of the person.
"""

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from ppfr.data import data_path, read_faces

from . import data as D
from .inversion import reconstruct, train_inversion
from .judges import BundleJudge, DlibJudge, cached_embed
from .metrics import normalise, psnr, ssim, threshold_at_far
from .server_view import Bundle, EnergySorted
from .whitebox import checkpoint_path, rekeyed, stem_images, whitebox_frontend

FAR = 1e-3
BASELINES = ("rgb", "bdct")  # no key: nothing for a white-box attacker to know beyond frontend.onnx


@dataclass
class Config:
    data: Path = field(default_factory=data_path)
    out: Path = Path("runs/attack")
    runs: Path = Path("runs")
    n_victims: int = 100
    n_calib: int = 200
    max_attacker: int | None = None
    utkface: int | None = None  # leak-filtered UTKFace faces added to the attacker's (None: all, 0: none)
    attacker_config: Path = Path("configs/dlib_ppfr_fd.yaml")  # whose data.unlabeled + leak filter
    steps: int = 1000
    batch: int = 32
    lr: float = 2e-3
    widths: tuple = (32, 64, 128, 256)
    res: int = 56
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
        against strangers too), and rank-1: the partner photo is the best match among all originals."""
        q = normalise(queries)
        sims = q @ self.orig.T
        genuine = sims[np.arange(self.nv), self.partner]
        other = self.ids[None, :] != self.ids[: self.nv, None]
        own = threshold_at_far(sims[other], FAR)  # the attack output's own FAR 1e-3 threshold
        sims[np.arange(self.nv), np.arange(self.nv)] = -np.inf  # never rank a query against its own photo
        return {
            "rank1": float((sims.argmax(1) == self.partner).mean()),
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


def attack_frontend(label, frontend, method, attacker, victims, judges, cfg) -> tuple:
    """Inversion: train on the attacker's faces, reconstruct the victims, score the reconstructions."""
    rng = np.random.default_rng(cfg.seed + 12345)  # victim queries: their own fresh randomness
    seen = frontend.protect(victims, rng)
    net, info = train_inversion(frontend, attacker, cfg, cfg.seed, desc=f"{label}: inversion")
    recon = reconstruct(net, seen)
    return score_images(label, method, seen, recon, victims, judges) | {"inversion": info}, seen, recon


def score_images(label, method, seen, recon, victims, judges) -> dict:
    """A row for images an attacker made of the victims: closeness (PSNR, SSIM) and identifiability."""
    a, b = victims.astype(np.float64) / 255, recon.astype(np.float64) / 255
    row = {
        "name": label,
        "method": method,
        "protected_shape": list(seen.shape[1:]),
        "psnr": float(psnr(a, b).mean()),
        "ssim": float(ssim(a, b).mean()),
        "judges": {},
    }
    for jname, judged in judges.items():
        emb = judged.judge.embed(recon, desc=f"{label}: {jname} on reconstructions")
        row["judges"][jname] = {"reconstruction": judged.score(emb)}
    return row


def linkage(bundle, victims, judges, seed) -> dict:
    """The bundle's recognizer on the victims' protected queries, against clean photos (module doc)."""
    emb = bundle.embed(bundle.protect(victims, np.random.default_rng(seed + 777)))
    return {jname: judged.score(emb) for jname, judged in judges.items()}


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


def attacker_faces(cfg, split) -> tuple[np.ndarray, dict]:
    celeba = read_faces(split.attacker_paths)
    if cfg.utkface == 0:
        return celeba, {"celeba": len(celeba), "utkface": None}
    utk, verdict = D.utkface_faces(cfg.attacker_config, cfg.utkface)
    return np.concatenate([celeba, utk]), {"celeba": len(celeba), "utkface": verdict}


def run(bundle_dirs, cfg: Config, save=None) -> dict:
    """Every bundle's rows; `save(row, seen, recon)` keeps each row's arrays as soon as it is done."""
    torch.set_num_threads(cfg.threads)
    t0 = time.time()
    bundles = [Bundle(p, cfg.threads) for p in bundle_dirs]
    for b in bundles if cfg.white_box else []:  # fail before hours of training, not after
        if b.method not in BASELINES and not checkpoint_path(b, cfg.runs).is_file():
            raise FileNotFoundError(
                f"--white-box needs {b.name}'s training checkpoint {checkpoint_path(b, cfg.runs)} "
                "(point --runs at the training runs, or leave out --white-box)"
            )
    split = D.make_split(cfg.data, cfg.n_victims, cfg.n_calib, cfg.max_attacker, cfg.seed)
    attacker, attacker_info = attacker_faces(cfg, split)
    victims, calib = read_faces(split.victim_paths), read_faces(split.calib_paths)
    judges = make_judges(cfg, split, victims, calib, bundles)
    ref_rows, mean_face = references(judges, victims, attacker)
    rows = []
    for b in bundles:
        if cfg.steps > 0:
            view = EnergySorted(b) if b.shuffles else b  # black box: frontend.onnx, no key
            row, seen, recon = attack_frontend(b.name, view, b.method, attacker, victims, judges, cfg)
        else:  # no inversion: linkage, key renewal and the server's stem image only
            row, seen, recon = {"name": b.name, "method": b.method, "judges": {}}, None, None
        row["linkage"] = linkage(b, victims, judges, cfg.seed)
        if b.method == "ppfr_fd":
            row["key_renewal"] = key_renewal(b, victims, calib, split)
        rows.append(row)
        if save and recon is not None:
            save(row, seen, recon)
        if cfg.white_box and b.method not in BASELINES:
            if cfg.steps > 0:
                label = f"{b.name} (white-box)"
                front = whitebox_frontend(b, cfg.runs)
                wrow, wseen, wrecon = attack_frontend(label, front, b.method, attacker, victims, judges, cfg)
                rows.append(wrow)
                if save:
                    save(wrow, wseen, wrecon)
            drawn = stem_images(b, victims, np.random.default_rng(cfg.seed + 12345), cfg.runs)
            if drawn is not None:  # the server's own recognizer draws a face: no attacker training at all
                srow = score_images(f"{b.name} (server's stem image)", b.method, *drawn, victims, judges)
                rows.append(srow)
                if save:
                    save(srow, *drawn)
    return {
        "split": {**split.describe(), "attacker_faces": attacker_info, "attacker_total": len(attacker)},
        "victim_images": [str(p) for p in split.victim_paths],
        "judges": {n: {"name": j.judge.name, **j.describe()} for n, j in judges.items()},
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(cfg).items()},
        "references": ref_rows,
        "results": rows,
        "wall_seconds": round(time.time() - t0, 1),
        "_arrays": (victims, mean_face),
    }
