"""Image-quality and matching metrics: PSNR and SSIM (scikit-image), thresholds at a target FAR.

Images are float arrays in [0, data_range], NHWC (or NHW for one channel). SSIM is Wang et al. 2004 as
the literature reports it: 11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03, population
statistics, mean over the positions whose window lies inside the image, then over colour channels.
"""

import numpy as np


def _nhwc(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(f"expected NHW or NHWC images, got shape {x.shape}")
    return x


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = _nhwc(a), _nhwc(b)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {a.shape} vs {b.shape}")
    return a, b


def psnr(a, b, data_range: float = 1.0) -> np.ndarray:
    """Per-image PSNR in dB; identical images give +inf."""
    from skimage.metrics import peak_signal_noise_ratio  # here: scikit-image (and SciPy) take ~1 s to import

    a, b = _pair(a, b)
    with np.errstate(divide="ignore"):
        return np.array([peak_signal_noise_ratio(x, y, data_range=data_range) for x, y in zip(a, b)])


def ssim(a, b, data_range: float = 1.0, sigma: float = 1.5) -> np.ndarray:
    """Per-image mean SSIM."""
    from skimage.metrics import structural_similarity

    a, b = _pair(a, b)
    if min(a.shape[1:3]) < 11:
        raise ValueError(f"images {a.shape[1:3]} are smaller than the 11x11 SSIM window")
    opts = dict(data_range=data_range, gaussian_weights=True, sigma=sigma, use_sample_covariance=False)
    return np.array([structural_similarity(x, y, channel_axis=-1, **opts) for x, y in zip(a, b)])


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
