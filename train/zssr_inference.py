"""ZSSR inference for one trained member, on tiles: the net on the bicubic upsampling with a
geometric self-ensemble, then back-projection with the member's kernel.

The LR image is cut into ``tile`` x ``tile`` tiles; only the tiles where the member's SR is needed
run (a region's pixels and the merge's feather band around them, :func:`needed_tiles`), each on a
window with a halo of :func:`window_halo` LR pixels, which is wider than everything the window's
edge can reach (the bicubic taps, the net's receptive field, the blur and upsampling of each
back-projection iteration). So the tiled result equals one pass over the whole image up to float
rounding: there is no seam to feather (``tests/test_zssr.py``), and the cost is that of the region's
area (plus halos), not of the whole image per region. Peak memory is that of one window
(:func:`window_bytes`), bounded by the tile side: :func:`tile_side` picks the largest that fits
``ZSSRConfig.max_memory_mb`` unless ``ZSSRConfig.tile`` fixes it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from .config import ZSSRConfig
from .degradation import blur_downsample, upsample_to
from .zssr_data import dihedral, dihedral_inverse
from .zssr_net import MemberConvNet, autocast_context

Box = tuple[int, int, int, int]  # (y0, y1, x0, x1), LR pixels, end-exclusive
TileProgress = Callable[[int, int], None]  # (tiles done, tiles in all)

#: The self-ensemble's transforms (see :func:`zssr_data.dihedral`) in the order a partial ensemble
#: takes them: 2 = identity and 180-degree rotation, 4 = also both flips, 8 = also the transposes.
ENSEMBLE_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
BICUBIC_RADIUS = 2  # input pixels a bicubic sample reads on either side
TILE_MIN = 32  # LR pixels; a smaller budget still gets tiles of this side


def back_project(sr: torch.Tensor, lr: torch.Tensor, kernel: torch.Tensor, scale: int, iterations: int) -> torch.Tensor:
    """sr (1, C, sH, sW), lr (1, C, H, W), kernel (1, K, K): sr += up(lr - D_k(sr)), ``iterations`` times."""
    for _ in range(iterations):
        sr = sr + upsample_to(lr - blur_downsample(sr, kernel, scale), sr.shape[-2:])
    return sr


@torch.inference_mode()
def upscale_window(
    net: MemberConvNet, lr: torch.Tensor, kernel: torch.Tensor, scale: int, config: ZSSRConfig
) -> torch.Tensor:
    """One member's SR of lr (1, C, H, W) -> (1, C, sH, sW) float32 (not clipped): the median over
    ``config.ensemble`` flips/rotations of the net on the bicubic upsampling, then
    ``config.back_projection_iterations`` of back-projection with ``kernel`` (1, K, K)."""
    autocast, _ = autocast_context(lr.device, config)
    up = upsample_to(lr, (lr.shape[-2] * scale, lr.shape[-1] * scale))
    outs = []
    for t in ENSEMBLE_ORDER[: config.ensemble]:
        with autocast:
            y = net(dihedral(up, t)).float()
        outs.append(dihedral_inverse(y, t))
    if len(outs) == 1:
        sr = outs[0]
    else:
        stacked = torch.stack(outs).sort(dim=0).values
        n = stacked.shape[0]
        sr = 0.5 * (stacked[(n - 1) // 2] + stacked[n // 2])
    return back_project(sr, lr, kernel, scale, config.back_projection_iterations)


def back_projection_reach(kernel_size: int, scale: int, iterations: int) -> int:
    """LR pixels a window's edge reaches inwards through ``iterations`` back-projections: each the
    K x K blur and subsampling by ``scale``, then the bicubic upsampling."""
    return iterations * (math.ceil((kernel_size // 2 + scale) / scale) + BICUBIC_RADIUS)


def window_halo(config: ZSSRConfig, kernel_size: int, scale: int) -> int:
    """LR pixels of context around a tile so that its SR equals the whole image's: how far a
    window's edge reaches inwards through the bicubic upsampling, the ``depth`` 3x3 convolutions
    (``depth`` SR pixels) and the back-projection, plus one pixel of slack."""
    reach = BICUBIC_RADIUS + math.ceil(config.depth / scale)
    return reach + back_projection_reach(kernel_size, scale, config.back_projection_iterations) + 1


def window_bytes(side: int, scale: int, config: ZSSRConfig, channels: int = 3) -> int:
    """Working memory (bytes, float32) of one ``side`` x ``side`` LR window at ``scale``: per SR
    pixel three live feature maps of the net, and the ensemble's outputs with their sorted copy."""
    per_sr_pixel = 4 * (3 * config.channels + channels * (2 * config.ensemble + 3))
    return per_sr_pixel * (side * scale) ** 2


def tile_side(config: ZSSRConfig, scale: int, halo: int, channels: int = 3) -> int:
    """``config.tile``, or the largest tile whose window (tile + 2 halos) fits ``config.max_memory_mb``
    (at least :data:`TILE_MIN`)."""
    if config.tile is not None:
        return int(config.tile)
    per_window_pixel = window_bytes(1, scale, config, channels)
    side = math.isqrt(int(config.max_memory_mb * 2**20 // per_window_pixel)) - 2 * halo
    return max(TILE_MIN, side)


def needed_tiles(need: np.ndarray | None, shape: tuple[int, int], tile: int) -> list[Box]:
    """The tiles of an LR image of ``shape`` (H, W) on a ``tile``-pixel grid that hold a pixel of
    ``need`` (bool HxW; None: every tile)."""
    h, w = shape
    boxes = []
    for y0 in range(0, h, tile):
        for x0 in range(0, w, tile):
            box = (y0, min(h, y0 + tile), x0, min(w, x0 + tile))
            if need is None or need[box[0] : box[1], box[2] : box[3]].any():
                boxes.append(box)
    return boxes


def needed_pixels(mask: np.ndarray | None, margin: int) -> np.ndarray | None:
    """Where a region's SR is needed: its mask (bool HxW, LR) grown by ``margin`` LR pixels (the
    merge's feather band); None (the whole image) for None. ValueError for an empty mask."""
    if mask is None:
        return None
    mask = np.asarray(mask, bool)
    if not mask.any():
        raise ValueError("empty region mask")
    return ndimage.distance_transform_cdt(~mask, metric="chessboard") <= margin


def upscale_tiles(
    window_sr: Callable[[Box], torch.Tensor],
    out: torch.Tensor,
    tiles: list[Box],
    shape: tuple[int, int],
    halo: int,
    scale: int,
    progress: TileProgress | None = None,
) -> torch.Tensor:
    """Write into ``out`` (1, C, sH, sW) the SR of each tile: ``window_sr(window)`` gives the SR
    (1, C, s*(y1-y0), s*(x1-x0)) of an LR window (a tile grown by ``halo`` pixels, clipped to the
    image of ``shape``), of which the tile's part is kept. Returns ``out``."""
    h, w = shape
    for done, (y0, y1, x0, x1) in enumerate(tiles, 1):
        a0, a1, b0, b1 = max(0, y0 - halo), min(h, y1 + halo), max(0, x0 - halo), min(w, x1 + halo)
        sr = window_sr((a0, a1, b0, b1))
        out[..., y0 * scale : y1 * scale, x0 * scale : x1 * scale] = sr[
            ..., (y0 - a0) * scale : (y1 - a0) * scale, (x0 - b0) * scale : (x1 - b0) * scale
        ]
        if progress is not None:
            progress(done, len(tiles))
    return out


@dataclass(frozen=True)
class TilePlan:
    """Where one :func:`zssr.run_zssr` call runs its nets. halo and tile: LR pixels; tiles[step][i]:
    member i's tiles in SR step ``step`` (one step, or two for gradual x4)."""

    halo: int
    tile: int
    tiles: tuple[tuple[list[Box], ...], ...]

    @property
    def count(self) -> int:
        return sum(len(member) for step in self.tiles for member in step)


def plan_tiles(
    masks: Sequence[np.ndarray | None], shape: tuple[int, int], scale: int, margin: int, config: ZSSRConfig,
    kernel_size: int, kernel_x4_size: int | None = None, channels: int = 3,
) -> TilePlan:
    """The :class:`TilePlan` of M members (``masks``: bool HxW LR regions or None) on an LR image of
    ``shape`` at ``scale``: each member's tiles hold its region grown by ``margin`` LR pixels.
    kernel_x4_size: the analytic x4 kernel's side for gradual x4 (two steps): the halo then also
    covers the second step (its x2 net and back-projection on the first step's output, then the
    x4 back-projection against the LR image), and the first step's tiles also cover what the
    second step's windows read."""
    gradual = kernel_x4_size is not None
    halo = window_halo(config, kernel_size, 2 if gradual else scale)
    if gradual:
        halo = max(halo, math.ceil(window_halo(config, kernel_size, 2) / 2)
                   + back_projection_reach(kernel_x4_size, 4, config.back_projection_iterations))
    tile = tile_side(config, scale, halo, channels)
    margins = (margin + halo, margin) if gradual else (margin,)
    tiles = tuple(tuple(needed_tiles(needed_pixels(mask, g), shape, tile) for mask in masks) for g in margins)
    return TilePlan(halo, tile, tiles)
