"""LFW as the project uses it: View-2 pairs.txt, the people with several crops, a few fixed faces.

Paths are relative to the aligned crops folder (<data>/lfw/aligned112), as "Name/Name_0001.jpg".
"""

from pathlib import Path

import numpy as np

from .images import read_faces
from .paths import DataError


def _image(name: str, number: str) -> str:
    return f"{name}/{name}_{int(number):04d}.jpg"


def _pair(path: Path, parts: list[str]) -> tuple[str, str, bool]:
    """One pairs.txt line: "name i j" (same person) or "name1 i name2 j" (different people)."""
    try:
        if len(parts) == 3:
            return _image(parts[0], parts[1]), _image(parts[0], parts[2]), True
        if len(parts) == 4:
            return _image(parts[0], parts[1]), _image(parts[2], parts[3]), False
    except ValueError:
        pass
    raise DataError(f"{path}: bad pairs line {' '.join(parts)!r}")


def read_pairs(path) -> tuple[list[tuple[str, str, bool]], np.ndarray]:
    """LFW View-2 pairs.txt: header 'folds n', then per fold n same-person lines ("name i j") and n
    different-person lines ("name1 i name2 j"). Returns ([(image, image, same)], fold index per pair)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"pairs file {path} does not exist")
    lines = [ln.split() for ln in path.read_text().splitlines() if ln.strip()]
    header = lines[0] if lines else []
    if len(header) != 2 or not all(x.isdigit() and int(x) > 0 for x in header):
        raise DataError(f"{path}: the first line must be 'folds pairs-per-fold', e.g. '10 300'")
    n_folds, per = int(header[0]), int(header[1])
    pairs = [_pair(path, parts) for parts in lines[1:]]
    if len(pairs) != n_folds * 2 * per:
        raise DataError(f"{path}: header promises {n_folds}x2x{per} pairs, found {len(pairs)}")
    return pairs, np.arange(len(pairs)) // (2 * per)


def lfw_pairs(root: Path, limit: int | None = None) -> tuple[list[tuple[str, str]], np.ndarray, np.ndarray]:
    """(pairs of images, same-person labels, fold index) of <root>/lfw/pairs.txt; `limit` keeps an equal
    share of every fold, the first of both its same-person and different-person pairs."""
    pairs, folds = read_pairs(Path(root) / "lfw" / "pairs.txt")
    per = int(np.sum(folds == 0)) // 2
    take = per if limit is None else min(per, max(1, limit // (2 * (int(folds[-1]) + 1))))
    keep = [i for i in range(len(pairs)) if i % (2 * per) % per < take]
    return [pairs[i][:2] for i in keep], np.array([pairs[i][2] for i in keep]), folds[keep]


def lfw_people(lfw: Path, min_images: int) -> dict[str, list[str]]:
    """name -> its aligned crops (relative to `lfw`, the aligned112 folder), for people with at least
    min_images crops."""
    people = {}
    for folder in sorted(p for p in Path(lfw).iterdir() if p.is_dir()):
        crops = sorted(f"{folder.name}/{f.name}" for f in folder.glob("*.jpg"))
        if len(crops) >= min_images:
            people[folder.name] = crops
    return people


def lfw_faces(root: Path, n: int = 16) -> np.ndarray:
    """n real aligned LFW faces spread over the pair images, uint8 RGB NHWC, always the same ones."""
    names = (Path(root) / "lfw" / "pairs_images.txt").read_text().split()[:: max(1, 6000 // n)][:n]
    return read_faces(Path(root) / "lfw" / "aligned112" / p for p in names)
