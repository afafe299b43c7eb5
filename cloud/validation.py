"""Checks on every request before anything touches the engine; a violation raises InvalidRequest, which the
service answers with INVALID_ARGUMENT and the message."""

import math

import numpy as np
from ppfr.bundle import numpy_dtype
from ppfr.protos import manifest_pb2, tensor_pb2, verification_pb2

WIRE_TYPES = (tensor_pb2.DATA_TYPE_FLOAT16, tensor_pb2.DATA_TYPE_FLOAT32)
MAX_SUBJECT_ID_CHARS = 256
MAX_TOP_K = 1000
DEFAULT_TOP_K = 5
MAX_IDEMPOTENCY_KEY_CHARS = 128
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_TOKEN_CHARS = 1024


class InvalidRequest(ValueError):
    """A request the server refuses; the message says what was wrong."""


def brief(values, limit: int = 8) -> str:
    """A list for an error message, bounded in size however long the list is."""
    values = list(values[: limit + 1])
    if len(values) <= limit:
        return str(values)
    return f"[{', '.join(str(v) for v in values[:limit])}, ...]"


def _type_name(value: int) -> str:
    try:
        return tensor_pb2.DataType.Name(value)
    except ValueError:
        return str(value)


class FaceValidator:
    """Turns a ProtectedFace into a [1, C, H, W] array of the recognizer's input type, or refuses it."""

    def __init__(self, manifest: manifest_pb2.BundleManifest):
        spec = manifest.protected_tensor
        self.frontend_id = manifest.frontend_id
        # Per-image shape; the bundle's leading dimension is the (dynamic) batch.
        self.image_shape = tuple(int(d) for d in spec.shape[1:])
        self.input_dtype = numpy_dtype(spec.data_type) if spec.data_type in WIRE_TYPES else np.dtype("<f4")

    def expected_shape(self) -> list[int]:
        return [1, *self.image_shape]

    def __call__(self, face: verification_pb2.ProtectedFace) -> np.ndarray:
        if not face.frontend_id:
            raise InvalidRequest("face.frontend_id is empty; every protected tensor must carry it")
        if face.frontend_id != self.frontend_id:
            raise InvalidRequest(
                f"face.frontend_id {face.frontend_id[:16]!r} is not the front-end this server serves "
                f"({self.frontend_id[:16]!r}); protect the face with this server's bundle"
            )
        if face.data_type not in WIRE_TYPES:
            raise InvalidRequest(
                f"face.data_type {_type_name(face.data_type)} is not accepted; "
                "send DATA_TYPE_FLOAT16 or DATA_TYPE_FLOAT32"
            )
        expected = self.expected_shape()
        if len(face.shape) != len(expected) or [int(d) for d in face.shape] != expected:
            raise InvalidRequest(
                f"face.shape {brief(face.shape)} ({len(face.shape)} dims) does not match the bundle's "
                f"protected tensor {expected}"
            )
        shape = expected
        dtype = numpy_dtype(face.data_type)
        want = math.prod(shape) * dtype.itemsize
        if len(face.data) != want:
            raise InvalidRequest(
                f"face.data has {len(face.data)} bytes; shape {shape} in {_type_name(face.data_type)} "
                f"needs {want}"
            )
        array = np.frombuffer(face.data, dtype=dtype).reshape(shape)
        if not np.isfinite(array).all():
            raise InvalidRequest("face.data contains NaN or infinite values")
        if array.dtype != self.input_dtype:
            with np.errstate(over="ignore"):
                array = array.astype(self.input_dtype)
            if not np.isfinite(array).all():
                raise InvalidRequest(f"face.data has values outside the range of {self.input_dtype}")
        return array


def subject_id(value: str) -> str:
    if not value:
        raise InvalidRequest("subject_id is empty")
    if len(value) > MAX_SUBJECT_ID_CHARS:
        raise InvalidRequest(f"subject_id is longer than {MAX_SUBJECT_ID_CHARS} characters")
    if not value.isprintable():
        raise InvalidRequest("subject_id contains control characters")
    return value


def top_k(value: int) -> int:
    if value < 0:
        raise InvalidRequest(f"top_k must be >= 0 (0 means {DEFAULT_TOP_K}), got {value}")
    if value > MAX_TOP_K:
        raise InvalidRequest(f"top_k must be at most {MAX_TOP_K}, got {value}")
    return value or DEFAULT_TOP_K


def idempotency_key(value: str) -> str | None:
    if len(value) > MAX_IDEMPOTENCY_KEY_CHARS:
        raise InvalidRequest(f"idempotency_key is longer than {MAX_IDEMPOTENCY_KEY_CHARS} characters")
    if not value.isprintable():
        raise InvalidRequest("idempotency_key contains control characters")
    return value or None


def template_id(value: int) -> int:
    if value <= 0:
        raise InvalidRequest(f"template_id must be a positive template id from Enroll, got {value}")
    return value


def page(page_size: int, page_token: str) -> tuple[int, str]:
    if not 0 <= page_size <= MAX_PAGE_SIZE:
        raise InvalidRequest(
            f"page_size must be 0..{MAX_PAGE_SIZE} (0 means {DEFAULT_PAGE_SIZE}), got {page_size}"
        )
    if len(page_token) > MAX_PAGE_TOKEN_CHARS or not page_token.isprintable():
        raise InvalidRequest("page_token is not one this server issued")
    return page_size or DEFAULT_PAGE_SIZE, page_token
