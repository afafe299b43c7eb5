"""The bundle's protection front-end (frontend.onnx) under ONNX Runtime: aligned face -> protected tensor.

One InferenceSession per bundle, created once; the random inputs are drawn fresh for every face from a
ChaCha20 stream keyed by a new 256-bit seed from the OS CSPRNG (see randomness.py), so two queries of the
same face never share key material.
"""

from pathlib import Path

import numpy as np
import onnxruntime as ort
from ppfr.protos import verification_pb2
from ppfr.protos.bundle import BundleError, data_type, numpy_dtype, read_manifest

from . import randomness
from .errors import EdgeError


class FrontEnd:
    def __init__(self, bundle_dir, threads: int = 0):
        self.bundle_dir = Path(bundle_dir)
        try:
            self.manifest = read_manifest(self.bundle_dir)
        except BundleError as err:
            raise EdgeError(str(err)) from None
        m = self.manifest
        path = self.bundle_dir / (m.frontend.path or "frontend.onnx")
        if not path.is_file():
            raise EdgeError(
                f"bundle {self.bundle_dir} has no front-end model {path.name} (re-run `make export`)"
            )
        if m.random_inputs and not randomness.available():
            raise EdgeError(randomness.MISSING)
        for spec in m.random_inputs:
            if spec.distribution not in randomness.DISTRIBUTIONS:
                raise EdgeError(
                    f"bundle {self.bundle_dir}: random input {spec.name} has an unknown distribution "
                    f"{spec.distribution!r}; this ppfr-edge knows {', '.join(randomness.DISTRIBUTIONS)}"
                )
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own untyped errors for bad files
            raise EdgeError(f"cannot load {path}: {err}") from None
        self.image_name = m.frontend_image_input.name or self.session.get_inputs()[0].name
        self.output_name = m.protected_tensor.name or self.session.get_outputs()[0].name
        self.wire_dtype = numpy_dtype(m.protected_tensor.data_type) if m.protected_tensor.data_type else None
        self.frontend_id = m.frontend_id

    @property
    def threshold(self) -> float:
        return self.manifest.threshold.cosine

    def random_inputs(self) -> dict[str, np.ndarray]:
        return randomness.draw_all(self.manifest.random_inputs, batch=1)

    def protect(self, face_rgb: np.ndarray) -> np.ndarray:
        """One aligned uint8 RGB 112x112x3 face -> the protected tensor [1, C, H, W] as sent on the wire."""
        feeds = {self.image_name: np.ascontiguousarray(face_rgb, dtype=np.uint8)[None]}
        feeds.update(self.random_inputs())
        (out,) = self.session.run([self.output_name], feeds)
        dtype = self.wire_dtype or out.dtype.newbyteorder("<")
        return np.ascontiguousarray(out, dtype=dtype)

    def to_proto(self, tensor: np.ndarray) -> verification_pb2.ProtectedFace:
        le = tensor.astype(tensor.dtype.newbyteorder("<"), copy=False)
        return verification_pb2.ProtectedFace(
            data=le.tobytes(),
            shape=list(tensor.shape),
            data_type=data_type(le.dtype),
            frontend_id=self.frontend_id,
        )
