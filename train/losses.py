"""KernelGAN losses, each returning one value per member: float32 (M,).

Kernels here are the generator's raw effective kernels, (M, K, K), before any post-processing;
images and discriminator maps are float32 with a leading member dimension.
"""

from __future__ import annotations

import torch

from .degradation import resize_bicubic
from .kernel import sf_center


def _member_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the first: (M, ...) -> (M,)."""
    return x.reshape(x.shape[0], -1).mean(dim=1)


def adversarial(d_map: torch.Tensor, label: float) -> torch.Tensor:
    """L1 between the discriminator's map (M, ...) in (0, 1) and a constant 0/1 label map -> (M,)."""
    return _member_mean((d_map - label).abs())


def discriminator_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """Mean of the real (label 1) and fake (label 0) L1 terms -> (M,)."""
    return 0.5 * (adversarial(d_real, 1.0) + adversarial(d_fake, 0.0))


def downscale_loss(g_input: torch.Tensor, g_output: torch.Tensor) -> torch.Tensor:
    """MSE between G(x) and the x0.5 bicubic (antialiased) downscale of x, centre-shaved to G's size.

    g_input: (M, C, H, W); g_output: (M, C, h, w) with h <= H/2. With a 13-tap receptive field the
    shave (3 px) puts both on the same grid (sample centres at 2i + 6.5 input pixels). -> (M,)
    """
    m, c, h, w = g_input.shape
    with torch.no_grad():
        target = resize_bicubic(g_input.reshape(m * c, 1, h, w), 0.5)
        target = target.reshape(m, c, *target.shape[-2:])
    oh, ow = g_output.shape[-2:]
    top, left = (target.shape[-2] - oh) // 2, (target.shape[-1] - ow) // 2
    target = target[..., top : top + oh, left : left + ow]
    return _member_mean((g_output - target) ** 2)


def sum_to_one(kernel: torch.Tensor) -> torch.Tensor:
    """|1 - sum k| per member; kernel (M, K, K) -> (M,)."""
    return (1.0 - kernel.sum(dim=(-1, -2))).abs()


def boundary_mask(size: int, scale: float = 30.0, ring: int = 2) -> torch.Tensor:
    """Penalty mask (K, K): ``scale * (1 - g / max g)`` for a Gaussian g of sigma K on the outer
    ``ring``-pixel ring, zero inside."""
    c = (size - 1) / 2.0
    r = torch.arange(size, dtype=torch.float64) - c
    g = torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2.0 * size * size))
    mask = scale * (1.0 - g / g.max())
    mask[ring : size - ring, ring : size - ring] = 0.0
    return mask.float()


def boundaries(kernel: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """mean |k * mask| per member (mask from :func:`boundary_mask` by default) -> (M,)."""
    if mask is None:
        mask = boundary_mask(kernel.shape[-1])
    return _member_mean((kernel * mask.to(kernel)).abs())


def centralized(kernel: torch.Tensor, scale: int = 2) -> torch.Tensor:
    """Squared distance (mean over the two axes, pixels^2) between the centre of mass of |k| and the
    sf-aligned centre (6.5 for 13x13 at x2) -> (M,)."""
    size = kernel.shape[-1]
    weights = kernel.abs()
    total = weights.sum(dim=(-1, -2)).clamp_min(1e-12)
    idx = torch.arange(size, device=kernel.device, dtype=kernel.dtype)
    row = (weights.sum(dim=-1) * idx).sum(dim=-1) / total
    col = (weights.sum(dim=-2) * idx).sum(dim=-1) / total
    centre = sf_center(size, scale)
    return 0.5 * ((row - centre) ** 2 + (col - centre) ** 2)


def sparsity(kernel: torch.Tensor, power: float = 0.2) -> torch.Tensor:
    """mean |k|^0.2 per member (|k| clamped at 1e-10 so the gradient stays finite) -> (M,)."""
    return _member_mean(kernel.abs().clamp_min(1e-10) ** power)
