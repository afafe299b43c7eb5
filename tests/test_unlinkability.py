"""D<->(s) and D<->sys (Gomez-Barrero et al., TIFS 2018) against cases worked by hand."""

import numpy as np
import pytest
from ppfr.attack.unlinkability import (
    dsys,
    dsys_from_densities,
    gaussian_kde,
    likelihood_ratio,
    local_measure,
    null_dsys,
)


def test_local_measure_by_hand():
    # LR w = 3: p(Hm|s) = 3/4, D = 2 * 3/4 - 1 = 1/2; LR w <= 1: 0; LR w infinite: 1
    np.testing.assert_allclose(local_measure([3.0, 1.0, 0.5, 0.0, np.inf]), [0.5, 0, 0, 0, 1])
    # the prior ratio moves the decision: LR 3 with w = 1/3 is exactly 1 -> 0; w = 3 -> (9-1)/(9+1)
    np.testing.assert_allclose(local_measure([3.0, 3.0], omega=1 / 3)[0], 0.0, atol=1e-12)
    np.testing.assert_allclose(local_measure([3.0], omega=3)[0], 0.8)
    np.testing.assert_allclose(likelihood_ratio([1, 0, 2, 0], [0.5, 1, 0, 0]), [2, 0, np.inf, 0])


def _uniform(a, b):
    return lambda s: np.where((s >= a) & (s <= b), 1.0 / (b - a), 0.0)


@pytest.mark.parametrize(
    "mated,nonmated,omega,expected",
    [
        # p_m = U(0,1), p_nm = U(0,2): LR = 2 on [0,1], D = (2-1)/(2+1) = 1/3, D_sys = int_0^1 1 * 1/3 = 1/3
        ((0, 1), (0, 2), 1.0, 1 / 3),
        # same with omega = 2: LR w = 4, D = 3/5 everywhere p_m lives
        ((0, 1), (0, 2), 2.0, 3 / 5),
        # omega = 1/4: LR w = 1/2 < 1, D = 0
        ((0, 1), (0, 2), 0.25, 0.0),
        # p_m = U(0,2), p_nm = U(1,3): [0,1] only mated (D = 1), [1,2] LR = 1 (D = 0): D_sys = 1/2 * 1 = 1/2
        ((0, 2), (1, 3), 1.0, 0.5),
        # disjoint supports: 1; identical: 0
        ((0.6, 1), (0, 0.4), 1.0, 1.0),
        ((0, 1), (0, 1), 1.0, 0.0),
    ],
)
def test_dsys_of_uniform_densities_by_hand(mated, nonmated, omega, expected):
    # cell midpoints of a fine grid, so no grid point sits on a discontinuity
    grid = (np.arange(300_000) + 0.5) / 100_000
    got = dsys_from_densities(grid, _uniform(*mated)(grid), _uniform(*nonmated)(grid), omega)
    assert got == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("estimator", [pytest.param("kde", marks=pytest.mark.slow), "hist"])
def test_dsys_from_samples(estimator):
    rng = np.random.default_rng(0)
    n = 100_000 if estimator == "hist" else 20_000
    # disjoint score distributions -> 1
    assert dsys(rng.uniform(0.6, 1, n), rng.uniform(-0.2, 0.4, n), estimator=estimator) > 0.97
    # identical distributions -> 0 up to the estimator's small upward bias
    same = dsys(rng.normal(0, 1, n), rng.normal(0, 1, n), estimator=estimator)
    assert 0 <= same < 0.03
    # a point mass (every mated score identical) away from the non-mated scores -> 1
    assert dsys(np.ones(1000), rng.uniform(0, 0.9, n), estimator=estimator) > 0.97
    # the hand-worked uniform case (1/3), from samples; KDE smooths the edges a little
    third = dsys(rng.uniform(0, 1, n), rng.uniform(0, 2, n), estimator=estimator, bins=40)
    assert third == pytest.approx(1 / 3, abs=0.03 if estimator == "kde" else 0.01)


def test_gaussian_kde_integrates_to_one_and_null_floor_is_small():
    rng = np.random.default_rng(1)
    x = rng.normal(0.3, 0.1, 5000)
    g = np.linspace(-0.5, 1.1, 4001)
    p = gaussian_kde(x, g)
    assert np.sum(0.5 * (p[1:] + p[:-1]) * np.diff(g)) == pytest.approx(1.0, abs=1e-3)
    assert 0 <= null_dsys(x) < 0.05


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="at least two"):
        dsys([0.1], [0.2, 0.3])
    with pytest.raises(ValueError, match="estimator"):
        dsys([0.1, 0.2], [0.2, 0.3], estimator="magic")
