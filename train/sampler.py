"""Region-aware crop probability maps for KernelGAN (the Multi-KernelGAN crop sampler).

A map says where crop *centres* may be drawn (the convention of :func:`masked_crop.gather_crops`:
a crop's top-left is ``centre - crop_size // 2``). It is built on the host once per member:

1. gradient map of the grey image: |gx|, |gy| and the gradient magnitude, averaged;
2. restricted to the region (zero outside) and thresholded so only the top ~3% of the region's
   values survive; Gaussian blur; box blur of about half the crop size;
3. multiplied by the region mask and by the *allowed centres* of :mod:`crop_fit` (the rule the
   masker and the other trainers share: crop inside the image, centre in the region, >= 90 % of the
   crop in the region, with its fallbacks to the centres of (nearly) maximal coverage); if the
   gradient map is zero over the allowed centres, the map is uniform over them.

The discriminator's map (26-px crops) is computed on the image; the generator's map (64-px crops)
on the image downscaled x0.5 and nearest-upsampled back (the generator's output should look like
the image's own downscaled patches). :func:`build_cdfs` stacks members of different sizes into
padded tensors with zero probability in the padding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from scipy import ndimage

from ..imageio import LUMA_WEIGHTS
from .crop_fit import fit_centres
from .degradation import resize_bicubic

TOP_FRACTION = 0.03  # share of the region's gradient values kept
_LUMA = np.asarray(LUMA_WEIGHTS, np.float64)


@dataclass
class CropMap:
    """Where one member's crop centres are drawn.

    prob: float64 HxW, non-negative, sums to 1 (zero outside the allowed centres);
    allowed: bool HxW, the centres allowed by the image border and region coverage;
    crop_size: crop side in pixels; min_coverage: lowest region coverage (in [0, 1]) of an allowed
    centre's crop; note: why a fallback was used, or None.
    """

    prob: np.ndarray
    allowed: np.ndarray
    crop_size: int
    min_coverage: float
    note: str | None = None


def to_grey(image: np.ndarray) -> np.ndarray:
    """HxW or HxWxC (C = 1, 2 grey+alpha, 3, 4 RGBA; alpha ignored) float in [0, 1] -> float64 HxW
    luma with the BT.601 weights of :data:`mkgan_engine.imageio.LUMA_WEIGHTS`. The channel handling
    is for the public entry points that take raw arrays (:func:`crop_probability_map`,
    :func:`kenet.estimate_region_kernels`).

    A float64 dot product, not :func:`mkgan_engine.imageio.luma`'s float32 sum (what the maskers
    use): the two round differently, and ZSSR turns the resulting ~1e-8 change of a KENet kernel
    into SR differences up to 0.06 (set5 butterfly), so the trainers keep this arithmetic."""
    image = np.asarray(image, np.float64)
    if image.ndim == 2:
        return image
    if image.shape[2] >= 3:
        return image[..., :3] @ _LUMA
    return image[..., 0]


def gradient_map(grey: np.ndarray) -> np.ndarray:
    """Mean of |gx|, |gy| and sqrt(gx^2 + gy^2) (central differences); float64 HxW, >= 0."""
    gy, gx = np.gradient(grey)
    return (np.abs(gx) + np.abs(gy) + np.hypot(gx, gy)) / 3.0


def _smooth_top(grad: np.ndarray, region: np.ndarray, crop_size: int) -> np.ndarray:
    """Keep the region's top TOP_FRACTION gradient values, Gaussian blur, box blur of crop_size // 2."""
    grad = np.where(region, grad, 0.0)
    values = grad[region]
    if values.size == 0 or values.max() <= 0:
        return np.zeros_like(grad)
    threshold = np.quantile(values, 1.0 - TOP_FRACTION)
    kept = np.where(grad >= max(threshold, 1e-12), grad, 0.0)
    blurred = ndimage.gaussian_filter(kept, sigma=1.5, mode="constant")
    return ndimage.uniform_filter(blurred, size=max(1, crop_size // 2), mode="constant")


def allowed_centres(mask: np.ndarray, crop_size: int) -> tuple[np.ndarray, float, str | None]:
    """:func:`crop_fit.fit_centres` as (allowed bool HxW, lowest coverage among them, fallback note or
    None); raises ValueError when the image is smaller than the crop or the region is empty."""
    fit = fit_centres(mask, crop_size)
    if fit.rule == "none":
        h, w = mask.shape
        if h < crop_size or w < crop_size:
            raise ValueError(f"image is {h}x{w}; crops need at least {crop_size}x{crop_size}")
        raise ValueError("region mask is empty: no pixel to draw crops from")
    return fit.allowed, fit.min_coverage, fit.note


def crop_probability_map(image: np.ndarray, mask: np.ndarray | None, crop_size: int, downscaled: bool = False) -> CropMap:
    """One member's crop-centre distribution.

    image: HxW or HxWxC float in [0, 1]; mask: bool HxW region (None = whole image); crop_size in
    pixels; downscaled: build the gradient map on the image downscaled x0.5 and nearest-upsampled
    (the generator's map). Raises ValueError for an empty region or an image smaller than the crop.
    """
    grey = to_grey(image)
    h, w = grey.shape
    region = np.ones((h, w), bool) if mask is None else np.asarray(mask, bool)
    if region.shape != (h, w):
        raise ValueError(f"mask shape {region.shape} does not match image shape {(h, w)}")
    if not region.any():
        raise ValueError("region mask is empty: no pixel to draw crops from")
    if h < crop_size or w < crop_size:
        raise ValueError(f"image is {h}x{w}; crops need at least {crop_size}x{crop_size} pixels")
    allowed, min_cov, note = allowed_centres(region, crop_size)
    if downscaled:
        small = _downscale_half(grey)
        small_region = region[::2, ::2][: small.shape[0], : small.shape[1]]
        smooth_small = _smooth_top(gradient_map(small), small_region, crop_size // 2)
        smooth = np.repeat(np.repeat(smooth_small, 2, 0), 2, 1)
        smooth = np.pad(smooth, ((0, max(0, h - smooth.shape[0])), (0, max(0, w - smooth.shape[1]))), mode="edge")[:h, :w]
    else:
        smooth = _smooth_top(gradient_map(grey), region, crop_size)
    in_region = allowed & region
    support = in_region if in_region.any() else allowed  # the latter only when no centre fits in the region
    prob = np.clip(smooth, 0, None) * support
    total = prob.sum()
    if not np.isfinite(total) or total <= 0:
        prob = support.astype(np.float64)
        total = prob.sum()
        note = (note + "; " if note else "") + "no gradients over the allowed centres: uniform sampling"
    return CropMap(prob / total, support, crop_size, min_cov, note)


def _downscale_half(grey: np.ndarray) -> np.ndarray:
    """x0.5 antialiased bicubic downscale of a float64 HxW image (torch, so it matches the trainer)."""
    return resize_bicubic(torch.from_numpy(np.ascontiguousarray(grey))[None, None], 0.5)[0, 0].numpy()


def region_crop_maps(
    image: np.ndarray, mask: np.ndarray | None, g_crop: int = 64, d_crop: int = 26
) -> tuple[CropMap, CropMap]:
    """(generator map for g_crop-px crops from the x0.5-downscaled gradients, discriminator map for
    d_crop-px crops from the image's gradients)."""
    return (
        crop_probability_map(image, mask, g_crop, downscaled=True),
        crop_probability_map(image, mask, d_crop, downscaled=False),
    )


def build_cdfs(
    maps: Sequence[np.ndarray], shape: tuple[int, int] | None = None, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Stack per-member probability maps (HmxWm, non-negative) into a float32 (M, H*W) CDF tensor for
    :func:`masked_crop.gather_crops`, padding each map to the common shape (H, W) (default: the
    largest) with zero probability. Each row ends at exactly 1.0, so an inverse-CDF draw with a
    uniform in [0, 1) never lands in the padding."""
    if shape is None:
        shape = (max(p.shape[0] for p in maps), max(p.shape[1] for p in maps))
    rows = []
    for p in maps:
        padded = np.zeros(shape, np.float64)
        padded[: p.shape[0], : p.shape[1]] = p
        cdf = np.cumsum(padded.ravel())
        if not cdf[-1] > 0:
            raise ValueError("a probability map is zero everywhere")
        rows.append((cdf / cdf[-1]).astype(np.float32))
    return torch.from_numpy(np.stack(rows)).to(device)
