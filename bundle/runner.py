"""A bundle folder run under ONNX Runtime: `protect()` (frontend.onnx with fresh random inputs, what the
edge sends) and `embed()` (recognizer.onnx, what the server computes). Sessions open on first use."""

from functools import cached_property
from pathlib import Path

import numpy as np
from google.protobuf import json_format

from . import randomness
from .manifest import BundleError, numpy_dtype, read_manifest
from .session import session

_ORT_FLOAT = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


class Bundle:
    """manifest.json, frontend.onnx and recognizer.onnx of one exported bundle."""

    def __init__(self, path, threads: int = 0):
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        self.threads = threads
        m = self.manifest
        self.name = m.name or self.path.name
        self.method = m.method
        self.frontend_id = m.frontend_id
        self.frontend_path = self.path / (m.frontend.path or "frontend.onnx")
        self.recognizer_path = self.path / (m.recognizer.path or "recognizer.onnx")
        self.image_input = m.frontend_image_input.name or "image"
        self.output = m.protected_tensor.name or "protected"
        self.wire_dtype = numpy_dtype(m.protected_tensor.data_type) if m.protected_tensor.data_type else None
        for spec in m.random_inputs:
            try:
                randomness.check(spec)
            except BundleError as err:
                raise BundleError(f"bundle {self.path}: {err}") from None

    @property
    def threshold(self) -> float:
        """The manifest's verification threshold: match iff cosine >= threshold."""
        return self.manifest.threshold.cosine

    @property
    def params(self) -> dict:
        return json_format.MessageToDict(self.manifest.method_params)

    @cached_property
    def frontend(self):
        """The front-end's ONNX Runtime session (opened on first use)."""
        return self._open(self.frontend_path, "front-end")

    @cached_property
    def recognizer(self):
        """The recognizer's ONNX Runtime session (opened on first use)."""
        return self._open(self.recognizer_path, "recognizer")

    def _open(self, path: Path, role: str):
        if not path.is_file():
            raise BundleError(f"bundle {self.path} has no {role} model {path.name} (re-run `make export`)")
        return session(path, self.threads)

    def random_inputs(self, batch: int = 1, rng=None) -> dict[str, np.ndarray]:
        """The manifest's random inputs for `batch` faces; rng None = a fresh OS-seeded ChaCha20 stream."""
        return randomness.draw_all(self.manifest.random_inputs, batch, rng)

    def protect(self, faces: np.ndarray, rng=None, batch: int = 64) -> np.ndarray:
        """uint8 RGB NHWC 112x112 faces (or one HWC face) -> protected tensors [N, C, H, W] in the wire
        dtype, fresh random inputs for every face, `batch` faces per run. rng: a `randomness.Generator`;
        None (production) draws every run from a new OS-seeded ChaCha20 stream; `Seeded(seed)` reproduces
        its draws (tools, tests)."""
        faces = faces[None] if faces.ndim == 3 else faces
        out = []
        for i in range(0, len(faces), batch):
            chunk = np.ascontiguousarray(faces[i : i + batch], dtype=np.uint8)
            feeds = {self.image_input: chunk, **self.random_inputs(len(chunk), rng)}
            (protected,) = self.frontend.run([self.output], feeds)
            out.append(protected)
        x = np.concatenate(out) if len(out) != 1 else out[0]
        return np.ascontiguousarray(x, dtype=self.wire_dtype or x.dtype.newbyteorder("<"))

    def embed(self, protected: np.ndarray, batch: int = 64) -> np.ndarray:
        """Protected tensors [N, C, H, W] -> L2-normalised float32 embeddings [N, D], `batch` per run."""
        inp = self.recognizer.get_inputs()[0]
        dtype = _ORT_FLOAT.get(inp.type, np.float32)
        out = [
            self.recognizer.run(
                None, {inp.name: np.ascontiguousarray(protected[i : i + batch], dtype=dtype)}
            )[0]
            for i in range(0, len(protected), batch)
        ]
        return l2_normalise(np.concatenate(out))


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
