"""ZSSR inference for one trained member: self-ensemble on the bicubic upsampling (tiled for large
inputs, exactly equal to one whole pass) and back-projection with the member's kernel."""

from __future__ import annotations

import numpy as np
import torch

from .config import ZSSRConfig
from .degradation import blur_downsample, upsample_to
from .zssr_data import dihedral, dihedral_inverse
from .zssr_net import MemberConvNet, autocast_context


def forward_tiled(net: MemberConvNet, x: torch.Tensor, tile: int) -> torch.Tensor:
    """net(x) for one member, x (1, C, H, W), computed on tiles of at most ``tile`` output pixels
    with a halo of ``depth`` pixels (the receptive radius), so the result equals one whole pass."""
    h, w = x.shape[-2:]
    if h <= tile and w <= tile:
        return net(x).float()
    halo = len(net.weights)
    out = torch.empty(x.shape, device=x.device, dtype=torch.float32)
    for y0 in range(0, h, tile):
        for x0 in range(0, w, tile):
            y1, x1 = min(h, y0 + tile), min(w, x0 + tile)
            a0, b0 = max(0, y0 - halo), max(0, x0 - halo)
            a1, b1 = min(h, y1 + halo), min(w, x1 + halo)
            y = net(x[..., a0:a1, b0:b1]).float()
            out[..., y0:y1, x0:x1] = y[..., y0 - a0 : y1 - a0, x0 - b0 : x1 - b0]
    return out


def back_project(sr: torch.Tensor, lr: torch.Tensor, kernel: torch.Tensor, scale: int, iterations: int) -> torch.Tensor:
    """sr (1, C, sH, sW), lr (1, C, H, W), kernel (1, K, K): sr += up(lr - D_k(sr)), ``iterations`` times."""
    for _ in range(iterations):
        sr = sr + upsample_to(lr - blur_downsample(sr, kernel, scale), sr.shape[-2:])
    return sr


@torch.no_grad()
def upscale_member(
    net: MemberConvNet, lr: torch.Tensor, kernel: torch.Tensor, scale: int, config: ZSSRConfig
) -> torch.Tensor:
    """One member's SR of lr (1, C, H, W) -> (1, C, sH, sW) float32 (not clipped): self-ensemble
    median of the net on the bicubic upsampling, then back-projection with ``kernel`` (1, K, K)."""
    autocast, _ = autocast_context(lr.device, config)
    up = upsample_to(lr, (lr.shape[-2] * scale, lr.shape[-1] * scale))
    transforms = range(8) if config.self_ensemble else range(1)
    outs = []
    for t in transforms:
        with autocast:
            y = forward_tiled(net, dihedral(up, t), config.inference_tile)
        outs.append(dihedral_inverse(y, t))
    if len(outs) == 1:
        sr = outs[0]
    else:
        stacked = torch.stack(outs).sort(dim=0).values
        n = stacked.shape[0]
        sr = 0.5 * (stacked[(n - 1) // 2] + stacked[n // 2])
    return back_project(sr, lr, kernel, scale, config.back_projection_iterations)


def region_box(mask: np.ndarray | None, shape: tuple[int, int], margin: int) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) bounding box of the mask plus ``margin`` pixels, clipped; whole image for None."""
    h, w = shape
    if mask is None:
        return 0, h, 0, w
    rows = np.flatnonzero(np.asarray(mask).any(1))
    cols = np.flatnonzero(np.asarray(mask).any(0))
    if rows.size == 0:
        raise ValueError("empty region mask")
    return (max(0, rows[0] - margin), min(h, rows[-1] + 1 + margin), max(0, cols[0] - margin), min(w, cols[-1] + 1 + margin))
