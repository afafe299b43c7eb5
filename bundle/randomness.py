"""The front-end's random inputs, drawn as the manifest's RandomInputSpec declares them, from a
pluggable generator.

Distributions (the torch side draws the same ones for training): "permutation" (a uniformly random
permutation of 0..n-1), "uniform_int" (uniform on [low, high)) and "laplace" (i.i.d. Laplace(loc, scale)).

Generators (anything with `permutations`, `integers` and `laplace` as below):
- `Stream()`, production: every query (`draw_all` without a generator) reads 32 bytes from `os.urandom`
  and uses them as the key of a ChaCha20 keystream (the `cryptography` package, i.e. OpenSSL, imported
  when a stream is made); every random input of that query is cut from this stream, read as
  little-endian 64-bit words. Keys are never reused, cached or logged, so an attacker who could tell the
  draws from os.urandom's could tell ChaCha20 from a random function (docs/edge.md, "Randomness"). The
  stream runs at memory speed, which `os.urandom` (a syscall per query, ~0.5 ms for DCTDP's 296 kB) and a
  Python Fisher-Yates loop over `secrets.randbelow` did not. `Stream(seed)` reproduces its draws: tests.
- `Seeded(seed)`, tools and tests: numpy's PCG64, so a rerun of a calibration or an attack sees the same
  draws (export/quantize.py, attack/). Never for queries that leave a device.

The stream's draws are vectorised numpy over the words:
- permutation: the order (argsort) of n random 64-bit words; a row with two equal words (probability
  below n^2 / 2^65) is drawn again, so the result is exactly uniform over the n! orders.
- uniform_int: rejection sampling of 64-bit words below the largest multiple of the span (unbiased).
- laplace: a uniform double u on the open interval (0, 1) from 52 bits, exactly (k + 1/2) / 2^52,
  a sign from another, independent bit of the same word; x = loc + scale * sign * (-ln u). That is the
  inverse CDF of the exponential (|x - loc| / scale ~ Exp(1)) with a fair sign, i.e. Laplace(loc, scale).
  u is never 0 or 1, so the log is always finite.
"""

import math
import os
import threading
from typing import Protocol

import numpy as np
from ppfr.bundle.manifest import BundleError, numpy_dtype

PERMUTATION = "permutation"
UNIFORM_INT = "uniform_int"
LAPLACE = "laplace"
DISTRIBUTIONS = (PERMUTATION, UNIFORM_INT, LAPLACE)

SEED_BYTES = 32  # a 256-bit ChaCha20 key
MISSING = "the random inputs need the `cryptography` package (ChaCha20): pip install 'ppfr[edge]'"

_ONE = np.uint64(0x3FF0_0000_0000_0000)  # the bits of the double 1.0
_HALF_ULP_BELOW_ONE = 1.0 - 2.0**-53  # [1, 2) minus this is exactly (k + 1/2) / 2^52, k < 2^52
_scratch = threading.local()  # per thread: a reusable zero buffer and keystream buffer (no page faults)


def available() -> bool:
    """Whether the production stream can be made (the `cryptography` package is installed)."""
    try:
        from cryptography.hazmat.primitives.ciphers import Cipher  # noqa: F401
    except ImportError:
        return False
    return True


class Generator(Protocol):
    """What `draw` needs from a source of randomness."""

    def permutations(self, n: int, rows: int) -> np.ndarray:
        """`rows` independent uniformly random permutations of 0..n-1, int64 [rows, n]."""
        ...

    def integers(self, low: int, high: int, count: int) -> np.ndarray:
        """`count` int64 uniform on [low, high)."""
        ...

    def laplace(self, loc: float, scale: float, count: int, dtype) -> np.ndarray:
        """`count` i.i.d. Laplace(loc, scale) as `dtype`."""
        ...


class Stream:
    """A ChaCha20 keystream keyed by a 256-bit seed, read as little-endian uint64 words.

    Without a seed the key is 32 fresh bytes from os.urandom (what every query uses). The nonce is all
    zeros: a key is used for one stream only, so a (key, nonce) pair never repeats."""

    def __init__(self, seed: bytes | None = None):
        try:
            from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
        except ImportError:  # pragma: no cover - exercised only on a broken install
            raise BundleError(MISSING) from None
        if seed is None:
            seed = os.urandom(SEED_BYTES)
        elif not isinstance(seed, bytes | bytearray) or len(seed) != SEED_BYTES:
            raise ValueError(f"a stream seed is {SEED_BYTES} bytes")
        self._cipher = Cipher(algorithms.ChaCha20(bytes(seed), bytes(16)), mode=None).encryptor()

    def fill(self, out: np.ndarray) -> np.ndarray:
        """Overwrite the contiguous array `out` with the next out.nbytes bytes of the keystream."""
        n = out.nbytes
        zeros = getattr(_scratch, "zeros", None)
        if zeros is None or len(zeros) < n:
            zeros = _scratch.zeros = bytes(max(n, 4096))
        self._cipher.update_into(memoryview(zeros)[:n], out.reshape(-1).view(np.uint8))
        return out

    def words(self, count: int) -> np.ndarray:
        """The next `count` words of the stream as a new uint64 array."""
        return self.fill(np.empty(count, dtype="<u8"))

    def scratch_words(self, count: int) -> np.ndarray:
        """The next `count` words in this thread's reusable buffer (valid until the next call on this
        thread): large draws then touch no fresh memory, which costs more than the cipher itself."""
        return self.fill(_scratch_array("words", count))

    def permutations(self, n: int, rows: int) -> np.ndarray:
        return permutations(n, rows, self)

    def integers(self, low: int, high: int, count: int) -> np.ndarray:
        return uniform_int(low, high, count, self)

    def laplace(self, loc: float, scale: float, count: int, dtype=np.float64) -> np.ndarray:
        return laplace_from_words(self.scratch_words(count), loc, scale, dtype=dtype)


class Seeded:
    """numpy's PCG64 seeded with an int (or a numpy Generator to continue): reproducible draws of the same
    distributions for tools and tests. Not for queries that leave a device (the OS seeds those)."""

    def __init__(self, seed: int | np.random.Generator = 0):
        self.rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)

    def permutations(self, n: int, rows: int) -> np.ndarray:
        return np.argsort(self.rng.random((rows, n)), axis=-1)

    def integers(self, low: int, high: int, count: int) -> np.ndarray:
        return self.rng.integers(low, high, count)

    def laplace(self, loc: float, scale: float, count: int, dtype=np.float64) -> np.ndarray:
        return self.rng.laplace(loc, scale, count).astype(dtype)


def _scratch_array(name: str, count: int) -> np.ndarray:
    """This thread's reusable uint64 buffer `name`, at least `count` words long, cut to `count`."""
    buf = getattr(_scratch, name, None)
    if buf is None or buf.size < count:
        buf = np.empty(max(count, 512), dtype="<u8")
        setattr(_scratch, name, buf)
    return buf[:count]


def open_unit(words: np.ndarray) -> np.ndarray:
    """Doubles uniform on the open interval (0, 1) from the top 52 bits of each word, in place (the
    words' memory becomes the doubles): k -> (k + 1/2) / 2^52, exact in float64 (1 + k / 2^52 minus
    1 - 2^-53), so never 0 or 1 (min 2^-53, max 1 - 2^-53)."""
    words >>= np.uint64(12)
    words |= _ONE
    u = words.view("<f8")
    u -= _HALF_ULP_BELOW_ONE
    return u


def laplace_from_words(words: np.ndarray, loc: float, scale: float, dtype=np.float32) -> np.ndarray:
    """Laplace(loc, scale), one per word: loc + scale * (+1 if bit 0 else -1) * (-ln u), u from bits
    12..63 (open_unit). Exact in law: -ln u ~ Exp(1) and the sign is fair and independent of u.
    Overwrites `words` (the stream's scratch buffer); returns a new array of `dtype`."""
    if not scale > 0:
        raise BundleError(f"laplace needs scale > 0, got {scale}")
    sign = np.left_shift(words, np.uint64(63), out=_scratch_array("signs", words.size).reshape(words.shape))
    x = open_unit(words)
    np.log(x, out=x)  # ln u < 0
    x.view("<u8")[...] ^= sign  # -ln u where bit 0 is set, ln u where it is not
    if scale != 1.0:
        x *= scale
    if loc != 0.0:
        x += loc
    return x.astype(dtype)


def uniform_int(low: int, high: int, count: int, stream: Stream) -> np.ndarray:
    """`count` integers uniform on [low, high), by rejection sampling of 64-bit words (unbiased)."""
    span = high - low
    if span <= 0 or span > 2**63:
        raise BundleError(f"uniform_int needs low < high, got [{low}, {high})")
    limit = (2**64 // span) * span  # accept words below the largest multiple of span
    out = np.empty(0, dtype=np.uint64)
    while out.size < count:  # a word is rejected with probability (2^64 mod span) / 2^64 < span / 2^64
        need = count - out.size
        words = stream.words(need + 4 + need // 8)
        if limit < 2**64:
            words = words[words < np.uint64(limit)]
        out = words if not out.size else np.concatenate([out, words])
    return (out[:count] % np.uint64(span)).astype(np.int64) + low


def permutations(n: int, rows: int, stream: Stream) -> np.ndarray:
    """`rows` independent uniformly random permutations of 0..n-1, int64 [rows, n]: the order of n
    random words per row; rows with a repeated word are drawn again (exactly uniform)."""
    if n < 1:
        raise BundleError(f"a permutation needs n >= 1, got {n}")
    words = stream.words(rows * n).reshape(rows, n)
    order = np.argsort(words, axis=1)
    ranked = np.take_along_axis(words, order, axis=1)
    tied = (ranked[:, 1:] == ranked[:, :-1]).any(axis=1)
    if tied.any():  # practically never: redraw just those rows from the stream
        order[tied] = permutations(n, int(tied.sum()), stream)
    return order


def _params(spec) -> dict[str, float]:
    """The spec's numeric parameters (n, low, high, loc, scale) from its protobuf Struct."""
    out = {}
    for key, value in spec.params.fields.items():
        if value.WhichOneof("kind") != "number_value":
            raise BundleError(f"random input {spec.name}: parameter {key} is not a number")
        out[key] = value.number_value
    return out


def check(spec) -> dict[str, float]:
    """The numeric parameters of the random input `spec` declares; BundleError unless this package can
    draw it."""
    if spec.distribution not in DISTRIBUTIONS:
        raise BundleError(
            f"random input {spec.name}: unknown distribution {spec.distribution!r}; this ppfr knows "
            f"{', '.join(DISTRIBUTIONS)}"
        )
    params = _params(spec)
    if spec.distribution == PERMUTATION:
        n = int(params.get("n", spec.shape[-1] if spec.shape else 0))
        if list(spec.shape) != [n] or n < 1:
            raise BundleError(
                f"random input {spec.name}: a permutation of {n} needs shape [{n}], got {list(spec.shape)}"
            )
    elif spec.distribution == UNIFORM_INT:
        low, high = params.get("low"), params.get("high")
        if low is None or high is None or not 0 < high - low <= 2**63:
            raise BundleError(f"random input {spec.name}: uniform_int needs low < high, got [{low}, {high})")
    elif not params.get("scale", 1.0) > 0:
        raise BundleError(f"random input {spec.name}: laplace needs scale > 0, got {params['scale']}")
    numpy_dtype(spec.data_type)
    return params


def draw(spec, batch: int = 1, rng: Generator | None = None) -> np.ndarray:
    """One random input for `batch` images: shape [batch, *spec.shape], the manifest's dtype. Without a
    generator, a fresh ChaCha20 stream from a new OS seed."""
    params = check(spec)
    rng = rng if rng is not None else Stream()
    shape = (batch, *(int(s) for s in spec.shape))
    count = math.prod(shape)
    dtype = numpy_dtype(spec.data_type)
    if spec.distribution == PERMUTATION:
        values = rng.permutations(shape[1], batch)
    elif spec.distribution == UNIFORM_INT:
        values = rng.integers(int(params["low"]), int(params["high"]), count).reshape(shape)
    else:
        loc, scale = float(params.get("loc", 0.0)), float(params.get("scale", 1.0))
        values = rng.laplace(loc, scale, count, dtype).reshape(shape)
    return np.ascontiguousarray(values, dtype=dtype)


def draw_all(specs, batch: int = 1, rng: Generator | None = None) -> dict[str, np.ndarray]:
    """Every declared random input of one query, all from one generator: by default a fresh ChaCha20
    stream keyed by 32 new bytes from os.urandom (pass `Seeded` or a seeded `Stream` in tools and tests)."""
    if not specs:
        return {}
    rng = rng if rng is not None else Stream()
    return {spec.name: draw(spec, batch, rng) for spec in specs}
