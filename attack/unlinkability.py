"""Unlinkability of protected templates: the local measure D<->(s) and the global D<->sys of
Gomez-Barrero et al., "General framework to evaluate unlinkability in biometric template protection
systems", IEEE TIFS 13(6), 2018. Written here from the paper's definitions.

Two templates are compared across two systems (two keys, two deployments) and give a score s.
H_m: they come from the same subject (mated); H_nm: from different subjects (non-mated).

    LR(s)     = p(s | H_m) / p(s | H_nm)              likelihood ratio of the two score densities
    omega     = p(H_m) / p(H_nm)                       prior ratio; omega = 1 for the standard figure
    p(H_m|s)  = LR(s) omega / (1 + LR(s) omega)
    D<->(s)   = p(H_m|s) - p(H_nm|s) = 2 p(H_m|s) - 1  when LR(s) omega > 1, else 0
              = (LR omega - 1) / (LR omega + 1)
    D<->sys   = integral of D<->(s) p(s | H_m) ds       in [0, 1]: 0 fully unlinkable, 1 fully linkable

Where p(s|H_nm) = 0 and p(s|H_m) > 0, LR is infinite and D<->(s) = 1.

Densities (documented choice, `estimator`):
- "kde" (default): Gaussian kernel density estimate of each score sample, bandwidth by Silverman's rule
  (0.9 min(sd, IQR/1.34) n^-1/5; at least 1/500 of the pooled score range, so that a sample of identical
  scores stays a narrow peak), evaluated on a grid of `grid` (4001) points spanning both samples plus 4
  bandwidths; the integral is the trapezoid rule on that grid.
- "hist": histograms with `bins` equal-width bins over the pooled score range (the same edges for both
  samples; default by the Rice rule on the smaller sample, 2 n^(1/3), at least 10: 29 bins for 3,000
  scores); the integral is the sum over bins of D<->(bin) p_m(bin) width.

Both estimators are biased upwards on finite samples: two samples of one and the same distribution give
D<->sys slightly above 0, because sampling noise makes the estimated LR exceed 1 on about half of the
axis. `null_dsys` measures that floor (split one sample in two and compare the halves); report it beside
any small figure.
"""

import numpy as np

ESTIMATORS = ("kde", "hist")


def local_measure(lr, omega: float = 1.0) -> np.ndarray:
    """D<->(s) from likelihood ratios (np.inf allowed): (LR w - 1) / (LR w + 1) where LR w > 1, else 0."""
    x = np.asarray(lr, dtype=np.float64) * float(omega)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        d = np.where(np.isinf(x), 1.0, (x - 1.0) / (x + 1.0))
    return np.where(x > 1.0, d, 0.0)


def likelihood_ratio(p_mated, p_nonmated) -> np.ndarray:
    """p_m / p_nm pointwise; inf where only p_m is positive, 0 where p_m is 0 (also where both are)."""
    pm = np.asarray(p_mated, dtype=np.float64)
    pn = np.asarray(p_nonmated, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        lr = np.where(pn > 0, pm / np.where(pn > 0, pn, 1.0), np.where(pm > 0, np.inf, 0.0))
    return np.where(pm > 0, lr, 0.0)


def dsys_from_densities(grid, p_mated, p_nonmated, omega: float = 1.0) -> float:
    """D<->sys for densities given on a grid of scores (trapezoid rule)."""
    grid = np.asarray(grid, dtype=np.float64)
    pm = np.asarray(p_mated, dtype=np.float64)
    d = local_measure(likelihood_ratio(pm, p_nonmated), omega)
    y = d * pm
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * np.diff(grid)))


def silverman_bandwidth(x) -> float:
    x = np.asarray(x, dtype=np.float64)
    sd = x.std(ddof=1) if len(x) > 1 else 0.0
    q75, q25 = np.percentile(x, [75, 25])
    spread = min(sd, (q75 - q25) / 1.34) if q75 > q25 else sd
    if spread <= 0:
        spread = max(abs(float(x.mean())), 1.0) * 1e-3
    return 0.9 * spread * len(x) ** -0.2


def gaussian_kde(samples, grid, bandwidth: float | None = None) -> np.ndarray:
    """Gaussian KDE of `samples` evaluated on `grid` (chunked: memory stays small for 10^5 samples)."""
    x = np.asarray(samples, dtype=np.float64)
    g = np.asarray(grid, dtype=np.float64)
    h = silverman_bandwidth(x) if bandwidth is None else float(bandwidth)
    out = np.zeros_like(g)
    for i in range(0, len(x), 4096):
        z = (g[:, None] - x[None, i : i + 4096]) / h
        out += np.exp(-0.5 * z * z).sum(axis=1)
    return out / (len(x) * h * np.sqrt(2 * np.pi))


def dsys(
    mated,
    nonmated,
    omega: float = 1.0,
    estimator: str = "kde",
    bins: int | None = None,
    grid: int = 4001,
) -> float:
    """D<->sys from two score samples (mated and non-mated cross-system comparisons)."""
    m = np.asarray(mated, dtype=np.float64).ravel()
    n = np.asarray(nonmated, dtype=np.float64).ravel()
    if len(m) < 2 or len(n) < 2:
        raise ValueError("need at least two mated and two non-mated scores")
    if estimator == "hist":
        bins = bins or max(10, int(round(2 * min(len(m), len(n)) ** (1 / 3))))
        edges = np.linspace(min(m.min(), n.min()), max(m.max(), n.max()), bins + 1)
        pm, _ = np.histogram(m, edges, density=True)
        pn, _ = np.histogram(n, edges, density=True)
        d = local_measure(likelihood_ratio(pm, pn), omega)
        return float(np.sum(d * pm * np.diff(edges)))
    if estimator != "kde":
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    lo, hi = min(m.min(), n.min()), max(m.max(), n.max())
    # a sample with (almost) no spread, e.g. identical scores, gets a bandwidth of 1/500 of the score
    # range, so its peak spans several grid points instead of falling between two
    floor = max(hi - lo, 1e-6) / 500
    hm, hn = max(silverman_bandwidth(m), floor), max(silverman_bandwidth(n), floor)
    pad = 4 * max(hm, hn)
    g = np.linspace(lo - pad, hi + pad, grid)
    return dsys_from_densities(g, gaussian_kde(m, g, hm), gaussian_kde(n, g, hn), omega)


def null_dsys(scores, seed: int = 0, **kw) -> float:
    """The estimator's floor: D<->sys between two random halves of one sample (same distribution)."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    idx = np.random.default_rng(seed).permutation(len(s))
    half = len(s) // 2
    return dsys(s[idx[:half]], s[idx[half:]], **kw)
