"""Masked-crop sampling: draw crop centres from per-member probability maps and gather the crops.

One call samples ``n`` crops for each of ``M`` members on the device where the images live:
uniforms (counter-based, see :mod:`rng`) -> inverse CDF over each member's probability map ->
crop centres -> gathered crops. The C++/CUDA extension in ``cpp_ext/`` implements
:func:`gather_crops_reference` in one kernel; this module chooses it when it builds and falls back
to the pure-PyTorch reference otherwise (same results, see tests/test_masked_crop.py).
"""

from __future__ import annotations

import torch


def centres_from_uniforms(cdf: torch.Tensor, uniforms: torch.Tensor, width: int) -> torch.Tensor:
    """Inverse-CDF sampling of flat pixel indices.

    cdf: float32 (M, H*W) non-decreasing cumulative sums of each member's probability map (need not
    be normalised); uniforms: float32 (M, n) in [0, 1); returns int64 (M, n, 2) centres as (y, x):
    the first index i with cdf[i] > u * cdf[-1].
    """
    targets = uniforms * cdf[:, -1:]
    flat = torch.searchsorted(cdf, targets.contiguous(), right=True).clamp_max(cdf.shape[1] - 1)
    return torch.stack((flat // width, flat % width), dim=-1)


def gather_crops_reference(
    images: torch.Tensor, cdf: torch.Tensor, uniforms: torch.Tensor, crop_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure-PyTorch masked crop (the semantics the C++/CUDA op must match exactly).

    images: (M, C, H, W) any float dtype; cdf: float32 (M, H*W); uniforms: float32 (M, n) in [0,1);
    crop_size: side in pixels (<= H, W). Returns crops (M, n, C, crop, crop) in images.dtype and
    centres int64 (M, n, 2) as (y, x). A crop's top-left is centre - crop_size // 2, clamped so
    the crop lies inside the image.
    """
    m, c, h, w = images.shape
    centres = centres_from_uniforms(cdf, uniforms, w)
    half = crop_size // 2
    top = (centres[..., 0] - half).clamp(0, h - crop_size)
    left = (centres[..., 1] - half).clamp(0, w - crop_size)
    offsets = torch.arange(crop_size, device=images.device)
    rows = (top[..., None] + offsets)  # (M, n, cs)
    cols = (left[..., None] + offsets)
    flat_index = rows[..., :, None] * w + cols[..., None, :]  # (M, n, cs, cs)
    n = uniforms.shape[1]
    src = images.reshape(m, 1, c, h * w).expand(m, n, c, h * w)
    idx = flat_index.reshape(m, n, 1, crop_size * crop_size).expand(m, n, c, crop_size * crop_size)
    crops = torch.gather(src, 3, idx).reshape(m, n, c, crop_size, crop_size)
    return crops, centres


def gather_crops(
    images: torch.Tensor, cdf: torch.Tensor, uniforms: torch.Tensor, crop_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked crop through the compiled extension when available, else the PyTorch reference.

    Same arguments and results as :func:`gather_crops_reference`.
    """
    from mkgan_engine.cpp_ext import load_masked_crop

    op = load_masked_crop()
    if op is None:
        return gather_crops_reference(images, cdf, uniforms, crop_size)
    return op(images, cdf, uniforms, crop_size)
