"""Image-quality and matching metrics: PSNR, SSIM (Wang et al. 2004), thresholds at a target FAR.

Images are float arrays in [0, data_range], NHWC (or NHW for one channel). SSIM follows the paper:
11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03, population (not sample) statistics,
mean over the "valid" positions (window fully inside the image), then over colour channels.
"""

import numpy as np
from scipy.ndimage import correlate1d


def _nhwc(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(f"expected NHW or NHWC images, got shape {x.shape}")
    return x


def psnr(a, b, data_range: float = 1.0) -> np.ndarray:
    """Per-image PSNR in dB; identical images give +inf."""
    a, b = _nhwc(a), _nhwc(b)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {a.shape} vs {b.shape}")
    mse = ((a - b) ** 2).mean(axis=(1, 2, 3))
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(data_range**2 / mse)


def gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    r = np.arange(size) - (size - 1) / 2
    g = np.exp(-(r**2) / (2 * sigma**2))
    return g / g.sum()


def _filter_valid(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Separable weighted mean over every window that fits inside the image (axes 1, 2)."""
    pad = len(w) // 2
    y = correlate1d(correlate1d(x, w, axis=1, mode="constant"), w, axis=2, mode="constant")
    return y[:, pad : x.shape[1] - pad, pad : x.shape[2] - pad]


def ssim(a, b, data_range: float = 1.0, win: int = 11, sigma: float = 1.5) -> np.ndarray:
    """Per-image mean SSIM."""
    a, b = _nhwc(a), _nhwc(b)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {a.shape} vs {b.shape}")
    if min(a.shape[1:3]) < win:
        raise ValueError(f"images {a.shape[1:3]} are smaller than the {win}x{win} SSIM window")
    w = gaussian_window(win, sigma)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = _filter_valid(a, w), _filter_valid(b, w)
    var_a = _filter_valid(a * a, w) - mu_a**2
    var_b = _filter_valid(b * b, w) - mu_b**2
    cov = _filter_valid(a * b, w) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.mean(axis=(1, 2, 3))


def threshold_at_far(impostor_scores, far: float) -> float:
    """Score threshold t such that at most a `far` fraction of impostor scores is > t (accept: s > t)."""
    s = np.sort(np.asarray(impostor_scores, dtype=np.float64))[::-1]
    if s.size == 0:
        raise ValueError("no impostor scores to calibrate a threshold on")
    k = int(np.floor(far * s.size))
    return float(s[min(k, s.size - 1)])


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two [N, D] arrays."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True).clip(1e-12)
    b = b / np.linalg.norm(b, axis=1, keepdims=True).clip(1e-12)
    return (a * b).sum(axis=1)


def normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)
