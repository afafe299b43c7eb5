"""Who the attacker trains on and who the victims are (identity-disjoint by construction).

- Attacker: clean CelebA training faces (`labels.csv`: aligned=1, suspect=0) minus the CelebA ids of
  `overlap_flags.json` `drop_ids` (people who also appear in LFW/CFP). CelebA and LFW identities are
  disjoint (DeepID2 authors; re-checked by embedding in overlap_flags.json). Plus UTKFace: the faces the
  recognizers trained on, minus the leak filter's near-matches of any LFW/CFP image (train/leak_filter.py,
  the same filter and cache as training), so no victim is in the attacker's data.
- Victims: LFW people with >= 2 aligned images; `n_victims` of them drawn with a fixed seed, their first
  two images (sorted) each. Every victim image is reconstructed; its partner photo is the reference.
- Calibration: `n_calib` other LFW people (not victims), one image each. The judges' FAR 1e-3 thresholds
  come from all different-person pairs among the victim and calibration originals.
"""

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ppfr.data import data_path, lfw_people


@dataclass
class Split:
    attacker_paths: list[Path]
    attacker_ids: list[int]
    victim_paths: list[Path]  # 2 per person, consecutive: (2k, 2k+1) are the same person
    victim_ids: list[str]
    calib_paths: list[Path]
    calib_ids: list[str]

    def describe(self) -> dict:
        return {
            "attacker": f"CelebA aligned112, {len(set(self.attacker_ids))} identities, "
            f"{len(self.attacker_paths)} images (clean rows, overlap drop_ids removed)",
            "victims": f"LFW aligned112, {len(set(self.victim_ids))} people x 2 images",
            "calibration": f"LFW aligned112, {len(self.calib_paths)} further people x 1 image",
            "identity_overlap": len(set(map(str, self.attacker_ids)) & set(self.victim_ids + self.calib_ids)),
        }


def attacker_set(data: Path, max_images: int | None, seed: int) -> tuple[list[Path], list[int]]:
    celeba = data / "celeba"
    labels, flags = celeba / "labels.csv", celeba / "overlap_flags.json"
    for p in (labels, flags):
        if not p.is_file():
            raise FileNotFoundError(f"missing {p}: the attacker's CelebA training faces (see ../shared/data)")
    drop = set(json.loads(flags.read_text())["drop_ids"])
    rows = []
    with labels.open() as f:
        for r in csv.DictReader(f):
            ident = int(r["celeba_identity"])
            if r["aligned"] == "1" and r["suspect"] == "0" and ident not in drop:
                rows.append((f"{ident:05d}/{r['file']}", ident))
    rows.sort()
    if max_images and len(rows) > max_images:
        pick = np.random.default_rng(seed).choice(len(rows), max_images, replace=False)
        rows = [rows[i] for i in sorted(pick)]
    return [celeba / "aligned112" / r for r, _ in rows], [i for _, i in rows]


def utkface_faces(config_path, max_images: int | None) -> tuple[np.ndarray, dict]:
    """The leak-filtered UTKFace faces of a training config (`data.unlabeled`), at most max_images
    (evenly spaced), and the filter's verdict (how many were dropped)."""
    from ppfr.train.config import full_config, load_config
    from ppfr.train.data import load_unlabeled
    from ppfr.train.leak_filter import filter_unlabeled

    dc = full_config(load_config(config_path))["data"]
    if not dc.get("unlabeled"):
        raise ValueError(f"{config_path} names no unlabeled (UTKFace) folder under data.unlabeled")
    spec = dc["unlabeled"][0]
    verdict = filter_unlabeled(spec, dc["eval"], dc["cache"], dc["leak_far"])
    images, files = load_unlabeled(spec["root"], dc["cache"])
    keep = np.flatnonzero(np.isin(np.array(files), np.array(verdict["keep"])))
    if max_images is not None and len(keep) > max_images:
        keep = keep[np.linspace(0, len(keep) - 1, max_images).astype(int)]
    info = {k: verdict[k] for k in ("faces", "dropped_count", "threshold", "far", "eval_images")}
    return np.asarray(images)[keep], {**info, "used": int(len(keep))}


def make_split(data=None, n_victims=40, n_calib=200, max_attacker=None, seed=0) -> Split:
    data = Path(data) if data else data_path()
    lfw = data / "lfw" / "aligned112"
    if not lfw.is_dir():
        raise FileNotFoundError(f"missing {lfw}: the LFW victim faces (see ../shared/data/README.md)")
    people = {name: [lfw / c for c in crops] for name, crops in lfw_people(lfw, 1).items()}
    multi = sorted(n for n, imgs in people.items() if len(imgs) >= 2)
    if n_victims > len(multi):
        raise ValueError(f"asked for {n_victims} victims, LFW has {len(multi)} people with >= 2 images")
    rng = np.random.default_rng(seed)
    victims = sorted(rng.choice(multi, n_victims, replace=False).tolist())
    others = sorted(set(people) - set(victims))
    calib = sorted(rng.choice(others, min(n_calib, len(others)), replace=False).tolist())
    a_paths, a_ids = attacker_set(data, max_attacker, seed)
    return Split(
        attacker_paths=a_paths,
        attacker_ids=a_ids,
        victim_paths=[p for n in victims for p in people[n][:2]],
        victim_ids=[n for n in victims for _ in range(2)],
        calib_paths=[people[n][0] for n in calib],
        calib_ids=calib,
    )
