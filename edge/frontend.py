"""The bundle's protection front-end (frontend.onnx) on the edge: aligned face -> protected tensor -> wire.

A ppfr.bundle.Bundle whose problems are EdgeErrors, with its session opened at start; every face's random
inputs come from a ChaCha20 stream keyed by a new 256-bit seed from the OS CSPRNG (ppfr.bundle.randomness),
so two queries of the same face never share key material.
"""

import numpy as np
from ppfr.bundle import Bundle, BundleError, data_type, randomness
from ppfr.protos import verification_pb2

from .errors import EdgeError


class FrontEnd(Bundle):
    def __init__(self, bundle_dir, threads: int = 0):
        try:
            super().__init__(bundle_dir, threads)
            if self.manifest.random_inputs and not randomness.available():
                raise BundleError(randomness.MISSING)
            self.frontend  # noqa: B018 - open the session now: a broken bundle fails at start
        except BundleError as err:
            raise EdgeError(str(err)) from None

    def to_proto(self, tensor: np.ndarray) -> verification_pb2.ProtectedFace:
        le = tensor.astype(tensor.dtype.newbyteorder("<"), copy=False)
        return verification_pb2.ProtectedFace(
            data=le.tobytes(),
            shape=list(tensor.shape),
            data_type=data_type(le.dtype),
            frontend_id=self.frontend_id,
        )
