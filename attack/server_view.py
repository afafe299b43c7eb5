"""What the server receives: a bundle's frontend.onnx run on faces with fresh randomness per query.

The random inputs are drawn per the manifest's RandomInputSpec with numpy's PCG64 generator (the edge
uses the OS CSPRNG; for generating attack data the distribution is what matters, not unpredictability).
"""

from pathlib import Path

import numpy as np
from google.protobuf import json_format
from ppfr.protos.bundle import BundleError, numpy_dtype, read_manifest


def _session(path: Path, threads: int):
    import onnxruntime as ort

    if not path.is_file():
        raise BundleError(f"bundle file missing: {path}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def draw(spec, batch: int, rng: np.random.Generator) -> np.ndarray:
    """One batch of a declared random input (permutation | uniform_int | laplace)."""
    shape = (batch, *[int(s) for s in spec.shape])
    params = json_format.MessageToDict(spec.params) if spec.HasField("params") else {}
    dtype = numpy_dtype(spec.data_type)
    if spec.distribution == "permutation":
        return np.argsort(rng.random(shape), axis=-1).astype(dtype)
    if spec.distribution == "uniform_int":
        return rng.integers(int(params["low"]), int(params["high"]), size=shape).astype(dtype)
    if spec.distribution == "laplace":
        return rng.laplace(0.0, 1.0, size=shape).astype(dtype)
    raise BundleError(f"random input {spec.name!r}: unknown distribution {spec.distribution!r}")


class Bundle:
    """frontend.onnx (+ recognizer.onnx on demand) of one exported bundle."""

    def __init__(self, path, threads: int = 1):
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        self.name = self.manifest.name or self.path.name
        self.method = self.manifest.method
        self.threads = threads
        self.frontend = _session(self.path / (self.manifest.frontend.path or "frontend.onnx"), threads)
        self._recognizer = None
        self.image_input = self.manifest.frontend_image_input.name or "image"
        self.output = self.manifest.protected_tensor.name or "protected"

    @property
    def params(self) -> dict:
        return json_format.MessageToDict(self.manifest.method_params)

    def protect(self, faces: np.ndarray, rng: np.random.Generator, batch: int = 64) -> np.ndarray:
        """uint8 RGB NHWC faces -> float32 protected tensors, fresh randomness for every face."""
        out = []
        for i in range(0, len(faces), batch):
            chunk = np.ascontiguousarray(faces[i : i + batch], dtype=np.uint8)
            feeds = {self.image_input: chunk}
            feeds.update({s.name: draw(s, len(chunk), rng) for s in self.manifest.random_inputs})
            out.append(self.frontend.run([self.output], feeds)[0].astype(np.float32))
        return np.concatenate(out)

    @property
    def shuffles(self) -> bool:
        """Whether each query's channels are chosen or ordered at random (PPFR-FD's permutation,
        PartialFace's subset and order indices), as opposed to noise (DCTDP)."""
        return any(s.distribution in ("permutation", "uniform_int") for s in self.manifest.random_inputs)

    def embed(self, protected: np.ndarray, batch: int = 64) -> np.ndarray:
        """recognizer.onnx: protected tensors -> L2-normalised embeddings."""
        if self._recognizer is None:
            self._recognizer = _session(self.path / (self.manifest.recognizer.path or "recognizer.onnx"), 1)
        sess = self._recognizer
        name = sess.get_inputs()[0].name
        dt = np.float16 if "float16" in sess.get_inputs()[0].type else np.float32
        out = [
            sess.run(None, {name: protected[i : i + batch].astype(dt)})[0]
            for i in range(0, len(protected), batch)
        ]
        return np.concatenate(out).astype(np.float32)


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
