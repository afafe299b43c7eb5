"""Reading and writing a bundle's manifest.json (ppfr.v1.BundleManifest in protobuf JSON form), and the
mapping between the manifest's ppfr.v1.DataType and numpy dtypes."""

from pathlib import Path

import numpy as np
from google.protobuf import json_format
from ppfr.protos import manifest_pb2, tensor_pb2

MANIFEST = "manifest.json"

_NUMPY = {
    tensor_pb2.DATA_TYPE_FLOAT16: np.dtype("<f2"),
    tensor_pb2.DATA_TYPE_FLOAT32: np.dtype("<f4"),
    tensor_pb2.DATA_TYPE_INT64: np.dtype("<i8"),
    tensor_pb2.DATA_TYPE_UINT8: np.dtype("u1"),
}


class BundleError(ValueError):
    """A bundle folder that is missing, incomplete or unreadable."""


def numpy_dtype(data_type: int) -> np.dtype:
    """Little-endian numpy dtype of a ppfr.v1.DataType."""
    if data_type not in _NUMPY:
        raise BundleError(f"unsupported data type {tensor_pb2.DataType.Name(data_type)}")
    return _NUMPY[data_type]


def data_type(dtype) -> int:
    """ppfr.v1.DataType of a numpy dtype (or dtype name)."""
    dt = np.dtype(dtype).newbyteorder("<") if np.dtype(dtype).itemsize > 1 else np.dtype(dtype)
    for value, known in _NUMPY.items():
        if known == dt:
            return value
    raise BundleError(f"unsupported dtype {dtype}")


def read_manifest(bundle_dir) -> manifest_pb2.BundleManifest:
    path = Path(bundle_dir) / MANIFEST
    if not path.is_file():
        raise BundleError(f"{bundle_dir} is not a bundle: no {MANIFEST} (run `make export` first)")
    try:
        return json_format.Parse(path.read_text(), manifest_pb2.BundleManifest())
    except json_format.ParseError as err:
        raise BundleError(f"{path} is not a valid BundleManifest: {err}") from None


def write_manifest(manifest: manifest_pb2.BundleManifest, bundle_dir) -> Path:
    path = Path(bundle_dir) / MANIFEST
    path.write_text(json_format.MessageToJson(manifest, indent=2) + "\n")
    return path
