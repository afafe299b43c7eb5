"""The front-end's random inputs, drawn from the operating system's CSPRNG per the bundle manifest.

Mirrors the distributions declared in the manifest's RandomInputSpec (the torch side draws the same
ones for training): "permutation" (a uniformly random permutation of 0..n-1), "uniform_int" (uniform on
[low, high)) and "laplace" (i.i.d. Laplace(loc, scale)). Every call draws fresh bytes from
os.urandom / secrets; nothing is cached or reused between queries.
"""

import math
import os
import secrets

import numpy as np
from google.protobuf import json_format
from ppfr.protos.bundle import BundleError, numpy_dtype

PERMUTATION = "permutation"
UNIFORM_INT = "uniform_int"
LAPLACE = "laplace"
DISTRIBUTIONS = (PERMUTATION, UNIFORM_INT, LAPLACE)


def random_uint64(count: int) -> np.ndarray:
    return np.frombuffer(os.urandom(8 * count), dtype="<u8").copy()


def permutation(n: int) -> np.ndarray:
    """Fisher-Yates with secrets.randbelow (rejection sampling inside: unbiased)."""
    perm = np.arange(n, dtype=np.int64)
    for i in range(n - 1, 0, -1):
        j = secrets.randbelow(i + 1)
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def uniform_int(low: int, high: int, count: int) -> np.ndarray:
    """`count` integers uniform on [low, high), by rejection sampling of 64-bit words (unbiased)."""
    span = high - low
    if span <= 0 or span > 2**63:
        raise BundleError(f"uniform_int needs low < high, got [{low}, {high})")
    limit = (2**64 // span) * span  # accept words below the largest multiple of span
    out = np.empty(0, dtype=np.uint64)
    while out.size < count:
        words = random_uint64(2 * (count - out.size) + 8)
        if limit < 2**64:
            words = words[words < np.uint64(limit)]
        out = np.concatenate([out, words])
    return (out[:count] % np.uint64(span)).astype(np.int64) + low


def open_unit(count: int) -> np.ndarray:
    """Doubles uniform on the open interval (0, 1): 52 random bits k, u = (k + 1/2) / 2**52. Every step is
    exact in float64, so u is never 0 or 1 (min 2**-53, max 1 - 2**-53)."""
    bits = random_uint64(count) >> np.uint64(12)
    return (bits.astype(np.float64) + 0.5) * 2.0**-52


def laplace(loc: float, scale: float, count: int) -> np.ndarray:
    """Laplace(loc, scale) by the inverse CDF of u ~ U(0, 1) (u never 0 or 1, so the log is finite)."""
    u = open_unit(count) - 0.5
    return loc - scale * np.sign(u) * np.log1p(-2.0 * np.abs(u))


def draw(spec, batch: int = 1) -> np.ndarray:
    """One random input for `batch` images: shape [batch, *spec.shape], the manifest's dtype."""
    params = json_format.MessageToDict(spec.params) if spec.HasField("params") else {}
    shape = (batch, *(int(s) for s in spec.shape))
    count = math.prod(shape)
    dtype = numpy_dtype(spec.data_type)
    if spec.distribution == PERMUTATION:
        n = int(params.get("n", shape[-1]))
        if len(shape) != 2 or shape[1] != n:
            raise BundleError(
                f"random input {spec.name}: a permutation of {n} needs shape [{n}], got {shape[1:]}"
            )
        values = np.stack([permutation(n) for _ in range(batch)])
    elif spec.distribution == UNIFORM_INT:
        values = uniform_int(int(params["low"]), int(params["high"]), count).reshape(shape)
    elif spec.distribution == LAPLACE:
        values = laplace(float(params.get("loc", 0.0)), float(params.get("scale", 1.0)), count).reshape(shape)
    else:
        raise BundleError(f"random input {spec.name}: unknown distribution {spec.distribution!r}")
    return np.ascontiguousarray(values, dtype=dtype)


def draw_all(specs, batch: int = 1) -> dict[str, np.ndarray]:
    return {spec.name: draw(spec, batch) for spec in specs}
