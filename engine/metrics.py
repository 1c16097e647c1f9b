"""Image quality metrics as DIV2KRK-style papers report them.

Images are float HxWx3 RGB in [0, 1] (or HxW). "Y" is the BT.601 luma of MATLAB's rgb2ycbcr
(16..235 range, scaled back to [0, 1]); ``shave`` pixels are removed from every border first
(``scale`` in the papers' protocol).
"""

from __future__ import annotations

import numpy as np


def rgb_to_y(image: np.ndarray) -> np.ndarray:
    """float HxWx3 RGB in [0,1] -> float64 HxW Y in [16/255, 235/255] (MATLAB rgb2ycbcr Y / 255);
    an HxW (grey) image is returned unchanged, as float64.

    This is ITU-R BT.601 *studio-range* Y (offset 16, scale 219/255, weights 65.481, 128.553,
    24.966), the quantity super-resolution papers compute PSNR-Y / SSIM-Y on, so scores compare
    with theirs. It is deliberately not :func:`mkgan_engine.imageio.luma` (full-range 0.299 R +
    0.587 G + 0.114 B in [0, 1], the grey image the maskers and trainers work on)."""
    if image.ndim == 2:
        return image.astype(np.float64)
    r, g, b = (image[..., i].astype(np.float64) for i in range(3))
    return (16.0 + 65.481 * r + 128.553 * g + 24.966 * b) / 255.0


def _prepare(a: np.ndarray, b: np.ndarray, shave: int, y: bool) -> tuple[np.ndarray, np.ndarray]:
    if a.shape[:2] != b.shape[:2]:
        raise ValueError(f"images of different sizes cannot be compared: {a.shape[1]}x{a.shape[0]} vs {b.shape[1]}x{b.shape[0]} px")
    if y:
        a, b = rgb_to_y(a), rgb_to_y(b)
    if shave:
        a, b = a[shave:-shave, shave:-shave], b[shave:-shave, shave:-shave]
    return np.clip(a.astype(np.float64), 0, 1), np.clip(b.astype(np.float64), 0, 1)


def mse(estimate: np.ndarray, truth: np.ndarray, shave: int = 0, y: bool = False) -> float:
    """Mean squared error in [0, 1]^2 units."""
    a, b = _prepare(estimate, truth, shave, y)
    return float(np.mean((a - b) ** 2))


def psnr(estimate: np.ndarray, truth: np.ndarray, shave: int = 0, y: bool = True) -> float:
    """PSNR in dB (peak 1.0), on Y by default."""
    error = mse(estimate, truth, shave, y)
    return float(10.0 * np.log10(1.0 / max(error, 1e-12)))


def ssim(estimate: np.ndarray, truth: np.ndarray, shave: int = 0, y: bool = True) -> float:
    """SSIM (scikit-image, Gaussian window sigma 1.5 as in Wang et al.), on Y by default."""
    from skimage.metrics import structural_similarity

    a, b = _prepare(estimate, truth, shave, y)
    kwargs = {"channel_axis": 2} if a.ndim == 3 else {}
    return float(
        structural_similarity(a, b, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, **kwargs)
    )


def score(estimate: np.ndarray, truth: np.ndarray, scale: int) -> dict[str, float]:
    """The protocol's metrics: Y-PSNR/SSIM with ``scale`` px shaved, RGB PSNR, MSE (RGB, shaved)."""
    return {
        "psnr_y": psnr(estimate, truth, shave=scale, y=True),
        "ssim_y": ssim(estimate, truth, shave=scale, y=True),
        "psnr_rgb": psnr(estimate, truth, shave=scale, y=False),
        "mse": mse(estimate, truth, shave=scale, y=False),
    }
