"""Father/son pairs for ZSSR training, batched over members (see :mod:`zssr` for the method).

A *father* is a crop of the image being upscaled (or of its scale-jitter pyramid), drawn from the
member's own region and flipped/rotated; its *son* is the father degraded with the member's kernel
and upsampled back. All levels of all members are laid side by side on one :class:`FatherCanvas`
so that one :func:`masked_crop.gather_crops` call per step draws every member's crops on the device;
the canvases of several images stack into one (:func:`stack_canvases`), so members of different
images train in one batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import rng
from .config import ZSSRConfig
from .crop_fit import MIN_INSIDE, Rule, fit_centres
from .degradation import blur_downsample, resize_bicubic, upsample_to
from .masked_crop import gather_crops


# ------------------------------------------------------------------------------------------------
# Flips and rotations
# ------------------------------------------------------------------------------------------------
def dihedral(x: torch.Tensor, t: int) -> torch.Tensor:
    """One of the 8 flips/rotations of the last two dims: flip W when t >= 4, then rot90 t % 4 times."""
    if t >= 4:
        x = x.flip(-1)
    return torch.rot90(x, t % 4, dims=(-2, -1))


def dihedral_inverse(x: torch.Tensor, t: int) -> torch.Tensor:
    x = torch.rot90(x, -(t % 4), dims=(-2, -1))
    return x.flip(-1) if t >= 4 else x


def dihedral_permutations(size: int, device: torch.device) -> torch.Tensor:
    """(8, size*size) flat-index maps: transformed.flat[i] = original.flat[perm[t, i]]."""
    base = torch.arange(size * size, device=device).reshape(size, size)
    return torch.stack([dihedral(base, t).reshape(-1) for t in range(8)])


# ------------------------------------------------------------------------------------------------
# Region-aware father sampling
# ------------------------------------------------------------------------------------------------
def region_centre_map(
    mask: np.ndarray | None, shape: tuple[int, int], crop_size: int, min_inside: float = MIN_INSIDE, fallback: bool = True
) -> tuple[np.ndarray, Rule]:
    """Admissible crop centres for one image (level) and one region: the rule of :mod:`crop_fit`
    (centre in the region, >= ``min_inside`` of the crop in it, crop in the image; with ``fallback``
    its fallbacks "centre" / "cover"). ``mask`` None = the whole image (every centre whose crop
    fits). Returns a float32 (h, w) 0/1 map and the rule used ("none" when nothing is admissible)."""
    region = np.ones(shape, bool) if mask is None else np.asarray(mask, bool)
    if region.shape != tuple(shape):
        raise ValueError(f"mask shape {region.shape} != image shape {tuple(shape)}")
    fit = fit_centres(region, crop_size, min_inside, fallback)
    return fit.allowed.astype(np.float32), fit.rule


Level = tuple[torch.Tensor, Sequence[np.ndarray | None], float]
"""One father source: images (M, C, h, w), one bool (h, w) mask or None per member, scale label."""


@dataclass
class FatherCanvas:
    """All father sources of a batch laid side by side: images (M, C, Hc, Wc) on the device, cdf
    float32 (M, Hc*Wc) (integer counts, exact, unless crops are also drawn outside the region; see
    :func:`build_father_canvas`), the per-member admissible-centre map and region map
    on the canvas (numpy, for diagnostics/tests), per member its level blocks (x offset, h, w,
    scale) and the rule used for its first level."""

    images: torch.Tensor
    cdf: torch.Tensor
    centres: np.ndarray
    regions: np.ndarray
    blocks: list[list[tuple[int, int, int, float]]]
    rules: list[str]
    crop_size: int

    def select(self, index: torch.Tensor) -> "FatherCanvas":
        """The members ``index`` (int64 (M',)) only, every field."""
        keep = index.cpu().tolist()
        return FatherCanvas(self.images.index_select(0, index), self.cdf.index_select(0, index), self.centres[keep],
                            self.regions[keep], [self.blocks[i] for i in keep], [self.rules[i] for i in keep], self.crop_size)


def _downscale_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    t = torch.from_numpy(mask.astype(np.float32))[None, None]
    return (F.interpolate(t, size=size, mode="area")[0, 0] >= 0.5).numpy()


def build_father_canvas(
    levels: Sequence[Level],
    crop_size: int,
    min_inside: float = MIN_INSIDE,
    region_share: float = 1.0,
) -> FatherCanvas:
    """levels: (images (M, C, h, w), one mask (h, w) or None per member, scale label); the first
    level is the main source (its centre map may use the fallbacks), the others only contribute
    crops that lie >= ``min_inside`` in the region. Levels smaller than the crop are skipped.

    region_share in [0, 1]: the probability that a member with a mask draws a crop from its region
    (as above); otherwise the crop is drawn uniformly from the whole image (all levels). With 1
    the centre maps are 0/1 counts; below 1 they are probabilities (each member's sums to 1)."""
    if not 0.0 <= region_share <= 1.0:
        raise ValueError(f"region_share must be in [0, 1], got {region_share}")
    used = [(img, masks, sc) for img, masks, sc in levels if img.shape[-2] >= crop_size and img.shape[-1] >= crop_size]
    if not used:
        raise ValueError(f"crop size {crop_size} does not fit the image")
    m, c = used[0][0].shape[:2]
    height = max(img.shape[-2] for img, _, _ in used)
    width = sum(img.shape[-1] for img, _, _ in used)
    device = used[0][0].device
    images = torch.zeros((m, c, height, width), device=device, dtype=torch.float32)
    centres = np.zeros((m, height, width), np.float32)
    regions = np.zeros((m, height, width), bool)
    blocks: list[tuple[int, int, int, float]] = []
    rules = [""] * m
    x0 = 0
    for li, (img, masks, sc) in enumerate(used):
        h, w = img.shape[-2:]
        images[:, :, :h, x0 : x0 + w] = img
        for i in range(m):
            mk = masks[i]
            prob, rule = region_centre_map(mk, (h, w), crop_size, min_inside, fallback=li == 0)
            centres[i, :h, x0 : x0 + w] = prob
            regions[i, :h, x0 : x0 + w] = True if mk is None else mk
            if li == 0:
                rules[i] = rule
        blocks.append((x0, h, w, sc))
        x0 += w
    for i in range(m):
        if rules[i] == "none":
            raise ValueError(f"member {i}: the region mask is empty")
    if region_share < 1.0:
        whole = np.zeros((height, width), np.float64)
        for x0, h, w, _ in blocks:
            whole[:h, x0 : x0 + w] = region_centre_map(None, (h, w), crop_size)[0]
        whole /= whole.sum()
        for i, mask in enumerate(used[0][1]):
            if mask is not None:
                centres[i] = region_share * centres[i] / centres[i].sum() + (1.0 - region_share) * whole
    cdf = torch.from_numpy(centres.reshape(m, -1)).to(device).cumsum(1)
    return FatherCanvas(images, cdf, centres, regions, [list(blocks) for _ in range(m)], rules, crop_size)


def stack_canvases(canvases: Sequence[FatherCanvas]) -> FatherCanvas:
    """The members of several canvases (e.g. of different images, same channels and crop size) in
    one, in order, each zero-padded at the bottom and right to the largest. Padding holds no centre,
    so a member draws exactly the crops it draws alone: its centres keep their row-major order, the
    cumulative sums their values, and a drawn crop never reaches the padding."""
    if len(canvases) == 1:
        return canvases[0]
    first = canvases[0]
    if any(c.crop_size != first.crop_size or c.images.shape[1] != first.images.shape[1] for c in canvases):
        raise ValueError("stacked canvases need one crop size and one channel count")
    height = max(c.images.shape[-2] for c in canvases)
    width = max(c.images.shape[-1] for c in canvases)
    m = sum(c.images.shape[0] for c in canvases)
    images = first.images.new_zeros((m, first.images.shape[1], height, width))
    centres = np.zeros((m, height, width), np.float32)
    regions = np.zeros((m, height, width), bool)
    i = 0
    for c in canvases:
        n, _, h, w = c.images.shape
        images[i : i + n, :, :h, :w] = c.images
        centres[i : i + n, :h, :w] = c.centres
        regions[i : i + n, :h, :w] = c.regions
        i += n
    cdf = torch.from_numpy(centres.reshape(m, -1)).to(first.images.device).cumsum(1)
    blocks = [b for c in canvases for b in c.blocks]
    return FatherCanvas(images, cdf, centres, regions, blocks, [r for c in canvases for r in c.rules], first.crop_size)


def sample_fathers(
    canvas: FatherCanvas, seeds: torch.Tensor, step: int | torch.Tensor, batch: int, perms: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """This step's father crops (M, B, C, crop, crop) (flipped/rotated) and their canvas centres
    (M, B, 2) as (y, x). Pure function of (seed, step): no host sync."""
    crops, augment = father_draws(seeds, step, 1, batch)
    return fathers_from_draws(canvas, crops[0], augment[0], perms)


def father_draws(seeds: torch.Tensor, first_step: int | torch.Tensor, window: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The uniforms of ``window`` consecutive steps from ``first_step`` in one call: (crop
    positions, flips/rotations), float32 (W, M, B) each (see :func:`fathers_from_draws`)."""
    return (rng.uniform_window(seeds, rng.Stream.ZSSR_CROPS, first_step, window, (batch,)),
            rng.uniform_window(seeds, rng.Stream.ZSSR_AUGMENT, first_step, window, (batch,)))


def fathers_from_draws(
    canvas: FatherCanvas, crops: torch.Tensor, augment: torch.Tensor, perms: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Father crops (M, B, C, crop, crop) and their canvas centres (M, B, 2) for one step's
    uniforms (M, B) each: crop positions (inverse CDF of the centre maps) and one of the 8
    flips/rotations per crop."""
    m, c = canvas.images.shape[:2]
    batch = crops.shape[1]
    cs = canvas.crop_size
    cropped, centres = gather_crops(canvas.images, canvas.cdf, crops, cs)
    t = (augment * 8).long().clamp_max(7)
    idx = perms[t][:, :, None, :].expand(m, batch, c, cs * cs)
    fathers = cropped.reshape(m, batch, c, cs * cs).gather(3, idx).reshape(m, batch, c, cs, cs)
    return fathers, centres


def make_sons(fathers: torch.Tensor, kernels: torch.Tensor, scale: int, noise: torch.Tensor | None = None) -> torch.Tensor:
    """fathers (M, B, C, S, S) -> bicubic-upsampled sons of the same shape: D_k(father) (+ noise)."""
    m, b, c, h, w = fathers.shape
    sons = blur_downsample(fathers.reshape(m, b * c, h, w), kernels, scale)
    if noise is not None:
        sons = sons + noise.reshape(sons.shape)
    return upsample_to(sons, (h, w)).reshape(m, b, c, h, w)


def father_levels(source: torch.Tensor, masks: Sequence[np.ndarray | None], config: ZSSRConfig) -> list[Level]:
    """The source (M, C, h, w) and its scale-jitter pyramid with matching masks."""
    levels = [(source, list(masks), 1.0)]
    if config.scale_jitter:
        h, w = source.shape[-2:]
        for sc in config.scale_jitter_levels:
            if sc >= 1.0:
                continue
            img = resize_bicubic(source, sc).clamp(0, 1)
            size = tuple(img.shape[-2:])
            lm = [None if mk is None else _downscale_mask(np.asarray(mk, bool), size) for mk in masks]
            levels.append((img, lm, sc))
    return levels
