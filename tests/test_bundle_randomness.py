"""The front-end's random inputs (ppfr.bundle.randomness): a ChaCha20 stream keyed by a fresh 256-bit OS
seed per query, and the seeded generator of tools and tests. Statistical tests against the target
distributions (Kolmogorov-Smirnov for Laplace, chi-square for permutation positions and uniform integers),
the per-query reseeding, and the edge cases.

The statistical tests use fixed seeds so they never flake: the seed is arbitrary, the stream is what is
tested. Production never passes a seed (test_every_query_reseeds_from_the_os)."""

import math
import sys

import numpy as np
import pytest
from google.protobuf import struct_pb2
from ppfr.bundle import randomness
from ppfr.bundle.randomness import Seeded, Stream
from ppfr.protos import manifest_pb2, tensor_pb2


def _spec(name, shape, dtype, distribution, **params):
    spec = manifest_pb2.RandomInputSpec(name=name, shape=shape, data_type=dtype, distribution=distribution)
    spec.params.CopyFrom(struct_pb2.Struct())
    spec.params.update(params)
    return spec


def _seed(i: int) -> bytes:
    return i.to_bytes(4, "little") * 8


NOISE = _spec("noise", [189, 14, 14], tensor_pb2.DATA_TYPE_FLOAT32, "laplace", loc=0.0, scale=1.0)
SHUFFLE = _spec("shuffle2", [34], tensor_pb2.DATA_TYPE_INT64, "permutation", n=34)
SUBSET = _spec("subset", [], tensor_pb2.DATA_TYPE_INT64, "uniform_int", low=0, high=6)
ORDER = _spec("permutation", [], tensor_pb2.DATA_TYPE_INT64, "uniform_int", low=0, high=3)


def laplace_cdf(x, loc, scale):
    z = (x - loc) / scale
    return np.where(z < 0, 0.5 * np.exp(np.minimum(z, 0)), 1 - 0.5 * np.exp(-np.maximum(z, 0)))


def ks_statistic(samples, cdf) -> float:
    """sup |F_n - F| of the samples against a continuous CDF (both one-sided gaps at every jump)."""
    x = np.sort(np.asarray(samples, dtype=np.float64))
    n = x.size
    f = cdf(x)
    return float(max((np.arange(1, n + 1) / n - f).max(), (f - np.arange(n) / n).max()))


def ks_critical(n: int, alpha: float) -> float:
    """Asymptotic (Kolmogorov) critical value of D_n at level alpha: sqrt(-ln(alpha / 2) / 2) / sqrt(n)."""
    return math.sqrt(-0.5 * math.log(alpha / 2)) / math.sqrt(n)


def chi_square_bound(dof: int, z: float = 5.0) -> float:
    """Upper quantile of chi-square(dof) by Wilson-Hilferty, z standard deviations out (~3e-7 for z=5)."""
    return dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3


# --- the stream -------------------------------------------------------------------------------------


def test_stream_is_chacha20_as_specified():
    """RFC 8439 appendix A.1, test vector 1: all-zero key and nonce, block counter 0."""
    block = Stream(bytes(32)).words(8).tobytes().hex()
    assert block == (
        "76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7"
        "da41597c5157488d7724e03fb8d84a376a43b8f41518a11cc387b669b2ee6586"
    )


def test_same_seed_reproduces_and_draws_continue_the_stream():
    a, b = Stream(_seed(1)), Stream(_seed(1))
    assert np.array_equal(a.words(100), b.words(100))
    assert np.array_equal(a.scratch_words(50), Stream(_seed(1)).words(150)[100:])
    specs = [NOISE, SHUFFLE, SUBSET, ORDER]
    x = randomness.draw_all(specs, rng=Stream(_seed(7)))
    y = randomness.draw_all(specs, rng=Stream(_seed(7)))
    assert all(np.array_equal(x[k], y[k]) for k in x)


def test_different_seeds_give_different_draws():
    draws = [randomness.draw(NOISE, rng=Stream(_seed(i))) for i in range(20)]
    assert len({d.tobytes() for d in draws}) == 20
    perms = [randomness.draw(SHUFFLE, rng=Stream(_seed(i))) for i in range(200)]
    assert len({p.tobytes() for p in perms}) == 200


def test_every_query_reseeds_from_the_os(monkeypatch):
    """Production: 32 fresh bytes from os.urandom per query, however much noise it needs; nothing reused."""
    reads = []
    real = randomness.os.urandom

    def counting(n):
        reads.append(n)
        return real(n)

    monkeypatch.setattr(randomness.os, "urandom", counting)
    specs = [NOISE, SHUFFLE, SUBSET, ORDER]
    first = randomness.draw_all(specs)
    second = randomness.draw_all(specs)
    assert reads == [randomness.SEED_BYTES, randomness.SEED_BYTES]
    assert not np.array_equal(first["noise"], second["noise"])
    assert not np.array_equal(first["shuffle2"], second["shuffle2"])


def test_bad_seeds_are_refused():
    for seed in (b"short", bytes(33), "x" * 32):
        with pytest.raises(ValueError, match="32 bytes"):
            Stream(seed)


# --- Laplace ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("loc,scale", [(0.0, 1.0), (0.0, 2.0), (0.5, 0.3)])
def test_laplace_passes_kolmogorov_smirnov(loc, scale):
    spec = _spec("noise", [189, 14, 14], tensor_pb2.DATA_TYPE_FLOAT32, "laplace", loc=loc, scale=scale)
    x = randomness.draw(spec, batch=8, rng=Stream(_seed(int(30 + 10 * scale))))  # 296,352, float32
    assert x.shape == (8, 189, 14, 14) and x.dtype == np.float32 and np.isfinite(x).all()
    n = x.size
    d = ks_statistic(x.ravel(), lambda t: laplace_cdf(t, loc, scale))
    assert d < ks_critical(n, 1e-3), (d, ks_critical(n, 1e-3))
    # ... and the test has the power to see a 5% error in scale or a shift of 2% of it.
    assert ks_statistic(x.ravel(), lambda t: laplace_cdf(t, loc, 1.05 * scale)) > ks_critical(n, 1e-6)
    assert ks_statistic(x.ravel(), lambda t: laplace_cdf(t, loc + 0.02 * scale, scale)) > ks_critical(n, 1e-6)
    assert abs(np.median(x) - loc) < 0.01 * scale and abs(x.var() / scale**2 - 2.0) < 0.05


def test_production_draws_pass_kolmogorov_smirnov():
    """The OS-seeded path itself (no fixed seed): fails by chance once in a million runs."""
    x = randomness.draw(NOISE, batch=4).ravel()
    assert ks_statistic(x, lambda t: laplace_cdf(t, 0.0, 1.0)) < ks_critical(x.size, 1e-6)


def test_ks_statistic_agrees_with_scipy():
    stats = pytest.importorskip("scipy.stats")
    x = Stream(_seed(4)).laplace(0.0, 1.5, 20_000)
    ours = ks_statistic(x, lambda t: laplace_cdf(t, 0.0, 1.5))
    assert ours == pytest.approx(stats.kstest(x, stats.laplace(0.0, 1.5).cdf).statistic, abs=1e-12)


def test_uniform_doubles_never_reach_0_or_1():
    """The extreme words give u = 2^-53 and 1 - 2^-53, exactly; Laplace noise stays finite."""
    words = np.array([0, 2**64 - 1, 2**63, 1 << 12], dtype="<u8")
    u = randomness.open_unit(words.copy())
    assert u.tolist() == [2.0**-53, 1 - 2.0**-53, 0.5 + 2.0**-53, 3 * 2.0**-53]
    x = randomness.laplace_from_words(words, 0.0, 1.0, dtype=np.float64)
    assert np.isfinite(x).all() and np.abs(x).max() == pytest.approx(53 * math.log(2))
    assert x[0] < 0 < x[1]  # bit 0 picks the sign


def test_laplace_rejects_a_non_positive_scale():
    with pytest.raises(ValueError, match="scale > 0"):
        randomness.draw(_spec("n", [3], tensor_pb2.DATA_TYPE_FLOAT32, "laplace", scale=0.0))


# --- permutations and integers ----------------------------------------------------------------------


def test_permutation_positions_are_uniform():
    """Every value equally likely at every position: chi-square over the 34x34 position counts."""
    rows = 30_000
    p = randomness.draw(SHUFFLE, batch=rows, rng=Stream(_seed(5)))
    assert p.shape == (rows, 34) and p.dtype == np.int64
    assert (np.sort(p, axis=1) == np.arange(34)).all()
    counts = np.zeros((34, 34))
    np.add.at(counts, (p, np.broadcast_to(np.arange(34), p.shape)), 1)
    expected = rows / 34
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < chi_square_bound(33 * 33), chi2


def test_all_orders_of_three_are_equally_likely():
    p = randomness.permutations(3, 60_000, Stream(_seed(6)))
    codes = p[:, 0] * 9 + p[:, 1] * 3 + p[:, 2]
    counts = np.unique(codes, return_counts=True)[1]
    assert len(counts) == 6
    assert ((counts - 10_000) ** 2 / 10_000).sum() < chi_square_bound(5)


def test_rows_with_tied_words_are_drawn_again():
    class Scripted:
        def __init__(self, *chunks):
            self.chunks = list(chunks)

        def words(self, count):
            chunk = self.chunks.pop(0)
            assert chunk.size == count
            return chunk

    first = np.array([5, 9, 5, 1, 7, 3, 8, 2], dtype="<u8")  # row 0 has a tie, row 1 does not
    again = np.array([4, 1, 3, 2], dtype="<u8")
    p = randomness.permutations(4, 2, Scripted(first, again))
    assert p.tolist() == [[1, 3, 2, 0], [3, 1, 0, 2]]


def test_uniform_ints_cover_the_half_open_range_evenly():
    assert randomness.draw(SUBSET).shape == (1,)
    values = randomness.uniform_int(0, 6, 60_000, Stream(_seed(8)))
    counts = np.bincount(values, minlength=6)
    assert values.min() == 0 and values.max() == 5
    assert ((counts - 10_000) ** 2 / 10_000).sum() < chi_square_bound(5)
    assert set(randomness.uniform_int(-2, 1, 2000, Stream(_seed(9))).tolist()) == {-2, -1, 0}


def test_unknown_distribution_is_rejected():
    with pytest.raises(ValueError, match="unknown distribution"):
        randomness.draw(_spec("x", [3], tensor_pb2.DATA_TYPE_FLOAT32, "gaussian"))


def test_non_numeric_parameters_are_rejected():
    spec = _spec("subset", [], tensor_pb2.DATA_TYPE_INT64, "uniform_int", low="zero", high=6)
    with pytest.raises(ValueError, match="low is not a number"):
        randomness.draw(spec)


def test_missing_cryptography_is_a_clear_error(monkeypatch, small_bundle):
    from ppfr.bundle import BundleError
    from ppfr.edge.errors import EdgeError
    from ppfr.edge.frontend import FrontEnd

    bundle = small_bundle("ppfr_fd")
    monkeypatch.setitem(sys.modules, "cryptography.hazmat.primitives.ciphers", None)  # import fails
    assert not randomness.available()
    with pytest.raises(BundleError, match="need the `cryptography` package"):
        Stream()
    with pytest.raises(EdgeError, match="need the `cryptography` package"):
        FrontEnd(bundle)


# --- the seeded generator of tools and tests --------------------------------------------------------


def test_seeded_draws_are_reproducible_and_numpys():
    """Seeded(seed) is numpy's PCG64: the same seed gives the same draws, and they are numpy's own
    (argsort of uniforms, integers, laplace), so calibrations made before the move stay the same."""
    specs = [NOISE, SHUFFLE, SUBSET]
    x = randomness.draw_all(specs, batch=3, rng=Seeded(11))
    assert all(
        np.array_equal(x[k], v) for k, v in randomness.draw_all(specs, batch=3, rng=Seeded(11)).items()
    )
    rng = np.random.default_rng(11)
    assert np.array_equal(x["noise"], rng.laplace(0.0, 1.0, (3, 189, 14, 14)).astype(np.float32))
    assert np.array_equal(x["shuffle2"], np.argsort(rng.random((3, 34)), axis=-1))
    assert np.array_equal(x["subset"], rng.integers(0, 6, (3,)))
    assert x["noise"].dtype == np.float32 and x["shuffle2"].dtype == np.int64


def test_seeded_laplace_passes_kolmogorov_smirnov():
    x = randomness.draw(NOISE, batch=2, rng=Seeded(3)).ravel()
    assert ks_statistic(x, lambda t: laplace_cdf(t, 0.0, 1.0)) < ks_critical(x.size, 1e-6)
