"""What the server receives: a bundle's frontend.onnx run on faces with fresh randomness per query.

The attacker's bundle is a ppfr.bundle.Bundle whose random inputs come from numpy's PCG64 (`Seeded`, the
same distributions as the edge's OS-seeded ChaCha20): for attack data the distribution is what matters,
not unpredictability, and a seeded rerun gives the same data.
"""

from pathlib import Path

import numpy as np
from ppfr import bundle
from ppfr.bundle import Seeded


class Bundle(bundle.Bundle):
    """frontend.onnx (+ recognizer.onnx on demand) of one exported bundle, float32 out, seeded draws."""

    def __init__(self, path, threads: int = 1):
        super().__init__(path, threads)
        self.frontend  # noqa: B018 - open now: a broken bundle fails before any training

    def protect(self, faces: np.ndarray, rng: np.random.Generator, batch: int = 64) -> np.ndarray:
        """uint8 RGB NHWC faces -> float32 protected tensors, fresh draws from `rng` for every face."""
        return super().protect(faces, Seeded(rng), batch).astype(np.float32)

    @property
    def shuffles(self) -> bool:
        """Whether each query's channels are chosen or ordered at random (PPFR-FD's permutation,
        PartialFace's subset and order indices), as opposed to noise (DCTDP)."""
        return any(s.distribution in ("permutation", "uniform_int") for s in self.manifest.random_inputs)


def find_bundles(root) -> list[Path]:
    root = Path(root)
    return sorted(p.parent for p in root.glob("*/manifest.json")) if root.is_dir() else []


class EnergySorted:
    """The black-box attacker's canonical view of a per-query channel shuffle: channels ordered by energy
    (mean |x|, descending), as the paper's PPFR-FD server does (train/ppfr_fd.py `EnergySort`). A stronger
    attacker would train a `ChainRouter` of its own on frontend.onnx with draws it chooses."""

    def __init__(self, bundle: Bundle):
        self.bundle = bundle

    def protect(self, faces: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        import torch
        from ppfr.train.ppfr_fd import EnergySort

        return EnergySort()(torch.from_numpy(self.bundle.protect(faces, rng))).numpy()
