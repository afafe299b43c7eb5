"""PSNR / SSIM / FAR-threshold against hand-computed values and a brute-force SSIM."""

import numpy as np
import pytest
from ppfr.attack.metrics import psnr, ssim, threshold_at_far


def test_psnr_known_values():
    a = np.zeros((1, 8, 8, 3))
    assert psnr(a, a + 0.1)[0] == pytest.approx(20.0)  # MSE 0.01 -> 10 log10(1 / 0.01)
    assert psnr(a, a + 0.5)[0] == pytest.approx(10 * np.log10(4))
    assert psnr(a * 255, a * 255 + 1, data_range=255)[0] == pytest.approx(20 * np.log10(255))
    assert np.isinf(psnr(a, a)[0])


def test_ssim_identical_and_constant_images():
    rng = np.random.default_rng(0)
    x = rng.random((2, 16, 16, 3))
    assert ssim(x, x) == pytest.approx([1.0, 1.0])
    # Two flat images: variances and covariance vanish, SSIM = luminance term (2ab + C1) / (a^2 + b^2 + C1).
    a, b, c1 = 0.2, 0.6, 0.01**2
    got = ssim(np.full((1, 16, 16), a), np.full((1, 16, 16), b))[0]
    assert got == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1))


def gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """The paper's 1-D SSIM window, for the brute-force reference."""
    r = np.arange(size) - (size - 1) / 2
    g = np.exp(-(r**2) / (2 * sigma**2))
    return g / g.sum()


def _ssim_brute(x, y, win=11, sigma=1.5):
    g = gaussian_window(win, sigma)
    w = np.outer(g, g)
    c1, c2 = 0.01**2, 0.03**2
    vals = []
    for i in range(x.shape[0] - win + 1):
        for j in range(x.shape[1] - win + 1):
            px, py = x[i : i + win, j : j + win], y[i : i + win, j : j + win]
            mx, my = (w * px).sum(), (w * py).sum()
            vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
            cov = (w * (px - mx) * (py - my)).sum()
            vals.append(((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(vals))


def test_ssim_matches_brute_force_window_formula():
    rng = np.random.default_rng(1)
    x = rng.random((15, 17))
    y = np.clip(x + 0.2 * rng.standard_normal(x.shape), 0, 1)
    assert ssim(x[None], y[None])[0] == pytest.approx(_ssim_brute(x, y), rel=1e-10)
    # colour images: mean over channels
    xc, yc = np.stack([x, y, x], -1), np.stack([y, y, 1 - x], -1)
    expect = np.mean([_ssim_brute(xc[..., k], yc[..., k]) for k in range(3)])
    assert ssim(xc[None], yc[None])[0] == pytest.approx(expect, rel=1e-10)


def test_ssim_rejects_small_or_mismatched_images():
    with pytest.raises(ValueError):
        ssim(np.zeros((1, 8, 8)), np.zeros((1, 8, 8)))
    with pytest.raises(ValueError):
        ssim(np.zeros((1, 16, 16)), np.zeros((1, 16, 17)))


def test_threshold_at_far():
    scores = np.arange(1000) / 1000.0  # 0.000 .. 0.999
    t = threshold_at_far(scores, 1e-2)
    assert (scores > t).mean() <= 1e-2
    assert t == pytest.approx(0.989)
    assert threshold_at_far(scores, 0.0) == pytest.approx(0.999)
