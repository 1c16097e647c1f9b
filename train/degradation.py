"""The degradation model: LR = (HR correlated with k) subsampled by s, and kernel synthesis.

All image tensors are float in [0, 1]. Correlation uses reflect padding so sizes are kept before
subsampling; with an sf-aligned kernel centre the LR grid stays aligned with the HR grid.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .kernel import sf_center


def blur_downsample(images: torch.Tensor, kernels: torch.Tensor, scale: int) -> torch.Tensor:
    """Per-member blur + subsample.

    images: (M, C, H, W) float; kernels: (M, kh, kw) float (each applied to all C channels);
    returns (M, C, ceil(H/scale), ceil(W/scale)): correlate (reflect padding), then take [::scale].
    """
    m, c, h, w = images.shape
    kh, kw = kernels.shape[-2:]
    top, left = (kh - 1) // 2, (kw - 1) // 2
    padded = F.pad(images, (left, kw - 1 - left, top, kh - 1 - top), mode="reflect")
    weight = kernels.to(images.dtype)[:, None, None].expand(m, c, 1, kh, kw).reshape(m * c, 1, kh, kw)
    blurred = F.conv2d(padded.reshape(1, m * c, h + kh - 1, w + kw - 1), weight, groups=m * c)
    return blurred.reshape(m, c, h, w)[..., ::scale, ::scale]


def degrade(hr: np.ndarray, kernel: np.ndarray, scale: int) -> np.ndarray:
    """hr: float32 HxWxC in [0,1]; kernel: KxK; returns float32 LR (ceil(H/s))x(ceil(W/s))xC in [0,1]."""
    x = torch.from_numpy(np.ascontiguousarray(hr.transpose(2, 0, 1)))[None].float()
    k = torch.from_numpy(np.asarray(kernel, np.float32))[None]
    lr = blur_downsample(x, k, scale)[0].numpy().transpose(1, 2, 0)
    return np.clip(lr, 0.0, 1.0).astype(np.float32)


def anisotropic_gaussian(
    size: int, lambda_1: float, lambda_2: float, theta: float, scale: int, center: float | None = None
) -> np.ndarray:
    """size x size Gaussian with covariance R(theta) diag(lambda_1, lambda_2) R(theta)^T (variances in
    pixels^2, theta in radians from the +x axis towards +y), centred at the sf-aligned centre; sum 1."""
    c = sf_center(size, scale) if center is None else center
    rotation = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    inv = np.linalg.inv(rotation @ np.diag([lambda_1, lambda_2]) @ rotation.T)
    rows, cols = np.indices((size, size), dtype=np.float64)
    d = np.stack([cols - c, rows - c], axis=-1)  # (x, y)
    k = np.exp(-0.5 * np.einsum("...i,ij,...j->...", d, inv, d))
    return (k / k.sum()).astype(np.float32)


def random_kernel(
    rng: np.random.Generator,
    size: int = 11,
    scale: int = 2,
    lambda_range: tuple[float, float] = (0.35, 5.0),
    tap_noise: float = 0.4,
    sigma_range: tuple[float, float] | None = None,
) -> tuple[np.ndarray, dict[str, float]]:
    """DIV2KRK-style random kernel: anisotropic Gaussian with lambda_1,2 ~ U(lambda_range), theta ~
    U(0, pi), multiplicative tap noise (1 + U(-tap_noise, tap_noise)), re-centred, normalised.
    ``sigma_range`` (px) instead draws the two standard deviations uniformly (lambda = sigma^2), which
    gives sharp kernels their share. Returns the kernel and its parameters."""
    from .kernel import shift_to_center

    if sigma_range is not None:
        l1, l2 = rng.uniform(*sigma_range, size=2) ** 2
    else:
        l1, l2 = rng.uniform(*lambda_range, size=2)
    theta = rng.uniform(0, math.pi)
    k = anisotropic_gaussian(size, l1, l2, theta, scale)
    k = k * (1.0 + rng.uniform(-tap_noise, tap_noise, size=k.shape))
    k = shift_to_center(np.clip(k, 0, None), scale)
    return k, {"lambda_1": float(l1), "lambda_2": float(l2), "theta": float(theta)}


def resize_bicubic(image: torch.Tensor, scale: float) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, round(H*scale), round(W*scale)) bicubic (antialiased when shrinking)."""
    h, w = image.shape[-2:]
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    return F.interpolate(image, size=size, mode="bicubic", align_corners=False, antialias=scale < 1)


def upsample_to(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of (N, C, h, w) to exactly ``size`` (pixel-centre aligned, like the LR grid of
    an sf-aligned kernel); no antialiasing (for upsampling)."""
    return F.interpolate(images, size=size, mode="bicubic", align_corners=False)


def noise_and_jpeg(
    image: np.ndarray, rng: np.random.Generator, noise_std: float = 0.0, jpeg_quality: int | None = None
) -> np.ndarray:
    """A camera's last steps: add Gaussian noise (std in [0, 1] units), quantise to 8 bits and, when
    ``jpeg_quality`` is given, JPEG-compress at that quality (OpenCV, 4:2:0 for colour).
    image: float HxW or HxWx3 RGB in [0, 1]; returns float32 of the same shape in [0, 1]."""
    import cv2

    out = np.asarray(image, np.float64)
    if noise_std > 0:
        out = out + rng.normal(0.0, noise_std, size=out.shape)
    pixels = np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)
    if jpeg_quality is not None:
        bgr = pixels[..., ::-1] if pixels.ndim == 3 else pixels
        ok, data = cv2.imencode(".jpg", np.ascontiguousarray(bgr), [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
        if not ok:
            raise RuntimeError("OpenCV could not JPEG-encode the image")
        decoded = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
        pixels = decoded[..., ::-1] if decoded.ndim == 3 else decoded
    return pixels.astype(np.float32) / 255.0
