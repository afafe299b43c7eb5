"""Face data: ImageFolder training sets, LFW-style pairs.txt and InsightFace .bin verification sets.

Every path is a config value; `../shared/...` means the shared folder (ppfr.data.shared_root(), so
PPFR_DATA moves it), other relative paths resolve against the repository root in a checkout, else against
the working directory. Decoded faces are
cached once as uint8 .npy (runs/.cache): on 2 cores one memory array beats a DataLoader with workers.
"""

import csv
import hashlib
import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ppfr.data import FACE_SIZE, DataError, read_pairs, read_rgb, shared_root

REPO_ROOT = Path(__file__).resolve().parents[1]
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")


def resolve(path) -> Path:
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    if p.parts[:2] == ("..", "shared"):  # how configs spell the shared folder
        return shared_root().joinpath(*p.parts[2:]).resolve()
    base = REPO_ROOT if (REPO_ROOT / "pyproject.toml").is_file() else Path.cwd()
    return (base / p).resolve()


def decode_images(paths: list[Path], cache_dir=None, tag: str = "faces") -> np.ndarray:
    """uint8 RGB [N,112,112,3]; cached under cache_dir keyed by the paths, sizes and mtimes."""
    key = hashlib.sha1()
    for p in paths:
        st = p.stat()
        key.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    cache = resolve(cache_dir) / f"{tag}-{key.hexdigest()[:16]}.npy" if cache_dir else None
    if cache is not None and cache.is_file():
        return np.load(cache, mmap_mode="r")
    out = np.empty((len(paths), FACE_SIZE, FACE_SIZE, 3), np.uint8)
    for i, p in enumerate(paths):
        out[i] = read_rgb(p)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")  # per process: parallel runs share the cache
        with open(tmp, "wb") as f:
            np.save(f, out)
        tmp.replace(cache)  # atomic: parallel runs never see a half-written cache
    return out


@dataclass
class FaceFolder:
    images: np.ndarray  # uint8 [N,112,112,3]
    labels: np.ndarray  # int64 [N], 0..C-1
    paths: list[str]  # relative to root, "<identity>/<file>"
    classes: list[str]  # identity folder names

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _drop_rows(labels_csv: Path) -> set[str]:
    """File names flagged suspect=1 or aligned=0 in a CelebA-style labels.csv."""
    drop = set()
    with open(labels_csv, newline="") as f:
        for row in csv.DictReader(f):
            if row.get("suspect", "0") == "1" or row.get("aligned", "1") == "0":
                drop.add(row["file"])
    return drop


def _drop_ids(overlap_json: Path) -> set[str]:
    ids = json.loads(overlap_json.read_text()).get("drop_ids", [])
    return {str(int(i)) if str(i).isdigit() else str(i) for i in ids}


def load_face_folder(root, labels_csv=None, overlap_json=None, cache_dir=None, max_images=None) -> FaceFolder:
    """ImageFolder of aligned faces: root/<identity>/<image>. Optional CelebA quality/overlap filters."""
    root = resolve(root)
    if not root.is_dir():
        raise DataError(f"training folder {root} does not exist (set data.train in the config)")
    drop_files = _drop_rows(resolve(labels_csv)) if labels_csv else set()
    drop_ids = _drop_ids(resolve(overlap_json)) if overlap_json else set()
    for opt in (labels_csv, overlap_json):
        if opt and not resolve(opt).is_file():
            raise DataError(f"{resolve(opt)} does not exist")
    files, classes = [], []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        ident = str(int(d.name)) if d.name.isdigit() else d.name
        if ident in drop_ids:
            continue
        imgs = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.name not in drop_files)
        if imgs:
            classes.append(d.name)
            files += [(p, len(classes) - 1) for p in imgs]
    if not files:
        raise DataError(f"no images found under {root}/<identity>/*.jpg")
    if max_images:  # evenly spaced subset (tests); keeps every identity's order
        files = [files[i] for i in np.linspace(0, len(files) - 1, min(max_images, len(files))).astype(int)]
    paths = [p for p, _ in files]
    images = decode_images(paths, cache_dir, tag="train")
    labels = np.array([c for _, c in files], np.int64)
    return FaceFolder(images, labels, [f"{p.parent.name}/{p.name}" for p in paths], classes)


@dataclass
class PairSet:
    name: str
    images: np.ndarray  # uint8 [U,112,112,3], unique images
    first: np.ndarray  # int64 [P] index into images
    second: np.ndarray
    same: np.ndarray  # bool [P]
    folds: np.ndarray  # int64 [P], 0..9


def _subset(n: int, max_pairs) -> np.ndarray:
    if not max_pairs or max_pairs >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, max_pairs).round().astype(int))


def load_pairs(name, pairs, root, cache_dir=None, max_pairs=None) -> PairSet:
    plist, folds = read_pairs(resolve(pairs))
    keep = _subset(len(plist), max_pairs)
    plist, folds = [plist[i] for i in keep], folds[keep]
    root = resolve(root)
    uniq = sorted({p for a, b, _ in plist for p in (a, b)})
    missing = [u for u in uniq if not (root / u).is_file()]
    if missing:
        raise DataError(f"{len(missing)} pair images missing under {root}, e.g. {missing[0]}")
    index = {u: i for i, u in enumerate(uniq)}
    images = decode_images([root / u for u in uniq], cache_dir, tag=f"pairs-{name}")
    first = np.array([index[a] for a, _, _ in plist])
    second = np.array([index[b] for _, b, _ in plist])
    same = np.array([s for _, _, s in plist], bool)
    return PairSet(name, images, first, second, same, folds)


def load_bin(name, path, max_pairs=None, folds: int = 10) -> PairSet:
    """InsightFace verification .bin: pickle (list of JPEG bytes, issame list); pair i = images 2i, 2i+1."""
    import cv2

    path = resolve(path)
    if not path.is_file():
        raise DataError(f"verification .bin {path} does not exist")
    with open(path, "rb") as f:
        bins, issame = pickle.load(f, encoding="bytes")
    n = len(issame)
    keep = _subset(n, max_pairs)
    images = []
    for i in keep:
        for j in (2 * i, 2 * i + 1):
            bgr = cv2.imdecode(np.frombuffer(bins[j], np.uint8), cv2.IMREAD_COLOR)
            if bgr is None:
                raise DataError(f"{path}: image {j} does not decode")
            if bgr.shape[:2] != (FACE_SIZE, FACE_SIZE):
                bgr = cv2.resize(bgr, (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_AREA)
            images.append(bgr[:, :, ::-1])
    k = len(keep)
    fold_of = (np.arange(n) * folds // n)[keep]  # KFold(shuffle=False) blocks over the full list
    same = np.array([bool(issame[i]) for i in keep])
    return PairSet(name, np.stack(images), np.arange(k) * 2, np.arange(k) * 2 + 1, same, fold_of)


def load_cfp(name, root, protocol: str, cache_dir=None, max_pairs=None) -> PairSet:
    """CFP (Sengupta et al.): protocol FF (frontal-frontal) or FP (frontal-profile), 10 splits of 350 same
    + 350 different pairs, from root/Protocol/{Pair_list_F,Pair_list_P}.txt and root/Data/Images112."""
    root = resolve(root)
    if protocol not in ("FF", "FP"):
        raise DataError(f"CFP protocol must be FF or FP, not {protocol!r}")

    def listing(kind: str) -> dict[str, str]:
        path = root / "Protocol" / f"Pair_list_{kind}.txt"
        if not path.is_file():
            raise DataError(f"{path} does not exist (is {root} the CFP folder?)")
        rows = (ln.split() for ln in path.read_text().splitlines() if ln.strip())
        return {i: p.replace("../Data/Images/", "Data/Images112/") for i, p in rows}

    first_list, second_list = listing("F"), listing("F" if protocol == "FF" else "P")
    plist, folds = [], []
    for k in range(1, 11):
        for fname, same in (("same.txt", True), ("diff.txt", False)):
            path = root / "Protocol" / "Split" / protocol / f"{k:02d}" / fname
            if not path.is_file():
                raise DataError(f"{path} does not exist")
            for ln in path.read_text().split():
                a, b = ln.split(",")
                plist.append((first_list[a], second_list[b], same))
                folds.append(k - 1)
    keep = _subset(len(plist), max_pairs)
    plist, folds = [plist[i] for i in keep], np.array(folds)[keep]
    uniq = sorted({p for a, b, _ in plist for p in (a, b)})
    index = {u: i for i, u in enumerate(uniq)}
    images = decode_images([root / u for u in uniq], cache_dir, tag=f"pairs-{name}")
    first = np.array([index[a] for a, _, _ in plist])
    second = np.array([index[b] for _, b, _ in plist])
    return PairSet(name, images, first, second, np.array([s for _, _, s in plist], bool), folds)


def load_unlabeled(root, cache_dir=None, max_images=None) -> tuple[np.ndarray, list[str]]:
    """A flat folder of aligned faces without identities (UTKFace): (uint8 images, file names)."""
    root = resolve(root)
    if not root.is_dir():
        raise DataError(f"unlabeled face folder {root} does not exist")
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise DataError(f"no images in {root}")
    if max_images:
        files = [files[i] for i in np.linspace(0, len(files) - 1, min(max_images, len(files))).astype(int)]
    return decode_images(files, cache_dir, tag="unlabeled"), [p.name for p in files]


def load_eval_set(spec: dict, cache_dir=None) -> PairSet:
    """spec: {name, pairs, root} (pairs.txt form), {name, bin} (InsightFace form) or {name, cfp, protocol}
    (CFP FF/FP); optional max_pairs."""
    name = spec.get("name", "eval")
    if "bin" in spec:
        return load_bin(name, spec["bin"], spec.get("max_pairs"))
    if "cfp" in spec:
        return load_cfp(name, spec["cfp"], spec.get("protocol", "FP"), cache_dir, spec.get("max_pairs"))
    if "pairs" in spec and "root" in spec:
        return load_pairs(name, spec["pairs"], spec["root"], cache_dir, spec.get("max_pairs"))
    raise DataError(f"eval set {name!r} needs either 'bin' or both 'pairs' and 'root'")
