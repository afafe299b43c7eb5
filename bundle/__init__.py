"""ppfr.bundle: read and run an exported bundle, the contract between export, edge and cloud (DESIGN §2).

Torch-free; imports only ppfr.protos of ours (plus numpy, protobuf, onnxruntime, and `cryptography` for
the production ChaCha20 stream, each imported where it is used). Whatever runs a bundle - edge, cloud,
export's calibration, attack, bench, tests - goes through it:

    from ppfr.bundle import Bundle, Seeded
    b = Bundle("artifacts/dlib_ppfr_fd")
    x = b.protect(faces)                 # uint8 NHWC -> protected tensors, OS-seeded ChaCha20 draws
    x = b.protect(faces, Seeded(0))      # reproducible draws (tools and tests)
    e = b.embed(x)                       # L2-normalised embeddings
"""

from .manifest import MANIFEST, BundleError, data_type, numpy_dtype, read_manifest, write_manifest
from .randomness import DISTRIBUTIONS, Generator, Seeded, Stream, draw, draw_all
from .runner import Bundle, l2_normalise
from .session import session

__all__ = [
    "DISTRIBUTIONS",
    "MANIFEST",
    "Bundle",
    "BundleError",
    "Generator",
    "Seeded",
    "Stream",
    "data_type",
    "draw",
    "draw_all",
    "l2_normalise",
    "numpy_dtype",
    "read_manifest",
    "session",
    "write_manifest",
]
