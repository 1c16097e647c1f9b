"""Does a crop fit a region? The one rule the masker and every trainer share.

A crop *centre* (y, x) stands for the ``crop x crop`` crop with top-left (y - crop // 2,
x - crop // 2) (the convention of :func:`masked_crop.gather_crops`). Its *coverage* is the share of
the crop's pixels inside the region (:func:`crop_coverage`).

The rule (:func:`fit_centres`), in order; the first step that allows a centre is used:

1. ``"inside"``: centres whose crop lies in the image, whose centre pixel is in the region and whose
   coverage is at least ``min_inside`` (:data:`MIN_INSIDE`, 90 %).
2. ``"centre"`` (fallback): in-region centres (crop in the image) whose coverage is within
   :data:`BEST_TOLERANCE` (0.02) of the best such centre's.
3. ``"cover"`` (fallback, no in-region centre's crop fits in the image): in-image centres whose
   coverage is within :data:`BEST_TOLERANCE` of the best and above 0 (crops covering most of the
   region).
4. ``"none"``: nothing allowed (no crop fits in the image, or the region is empty).

Who uses it: the KernelGAN crop sampler (:mod:`sampler`, generator and discriminator crops), KENet's
windows (:func:`kenet.window_centres`, through :func:`sampler.allowed_centres`), ZSSR's fathers
(:func:`zssr_data.region_centre_map`) and the masker's post-processing
(:mod:`mkgan_engine.maskers.postprocess`), which keeps a region only when step 1 allows a centre
for KernelGAN's crop (:func:`holds_crop`), so the trainers only fall back on regions they are
given directly (a caller's RegionMap, a user mask) or on crops larger than KernelGAN's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Rule = Literal["inside", "centre", "cover", "none"]

MIN_INSIDE = 0.9
"""Share of a crop's pixels that must lie in the region (step 1)."""
BEST_TOLERANCE = 0.02
"""Fallbacks: centres within this coverage of the best one are allowed."""
_EPS = 1e-9  # coverage is a ratio of integers: >= min_inside up to rounding

__all__ = ["BEST_TOLERANCE", "MIN_INSIDE", "CropFit", "Rule", "crop_coverage", "fit_centres", "holds_crop"]


@dataclass(frozen=True)
class CropFit:
    """Where one region's crops may be centred.

    allowed: bool HxW centres; rule: the step of the module's rule that allowed them;
    min_coverage: lowest coverage (in [0, 1]) among the allowed centres (NaN for "none");
    best: highest coverage the step looked at (NaN for "inside" and "none"); crop_size in pixels;
    min_inside: the threshold of step 1.
    """

    allowed: np.ndarray
    rule: Rule
    min_coverage: float
    best: float
    crop_size: int
    min_inside: float

    @property
    def note(self) -> str | None:
        """Why a fallback was used (None for "inside")."""
        if self.rule == "inside":
            return None
        if self.rule == "none":
            return f"no {self.crop_size}px crop fits the image and touches the region"
        where = "inside the region" if self.rule == "centre" else "in the image (no in-region centre fits)"
        return (
            f"no {self.crop_size}px crop covers the region by {self.min_inside:.0%}; using centres {where} "
            f"with maximal coverage {self.best:.0%}"
        )


def crop_coverage(mask: np.ndarray, crop_size: int) -> np.ndarray:
    """For every centre (y, x): share of the crop [y - cs//2, y - cs//2 + cs) x (same in x) inside the
    mask; NaN where the crop leaves the image. float64 HxW in [0, 1] (exact pixel counts / cs^2)."""
    h, w = mask.shape
    cs, half = crop_size, crop_size // 2
    integral = np.zeros((h + 1, w + 1), np.float64)
    integral[1:, 1:] = np.cumsum(np.cumsum(mask.astype(np.float64), 0), 1)
    coverage = np.full((h, w), np.nan)
    if h < cs or w < cs:
        return coverage
    sums = integral[cs:, cs:] - integral[:-cs, cs:] - integral[cs:, :-cs] + integral[:-cs, :-cs]
    coverage[half : half + h - cs + 1, half : half + w - cs + 1] = sums / (cs * cs)
    return coverage


def fit_centres(mask: np.ndarray, crop_size: int, min_inside: float = MIN_INSIDE, fallback: bool = True) -> CropFit:
    """The allowed centres of ``crop_size`` crops for the bool HxW region ``mask`` (the module's rule;
    without ``fallback`` only step 1, else "none")."""
    region = np.asarray(mask, bool)
    coverage = crop_coverage(region, crop_size)
    fits = np.isfinite(coverage)
    cov = np.where(fits, coverage, -1.0)
    candidates = fits & region
    allowed = candidates & (cov >= min_inside - _EPS)
    rule: Rule = "inside"
    best = float("nan")
    if not allowed.any():
        pool = candidates if candidates.any() else fits
        best = float(cov[pool].max()) if pool.any() else 0.0
        if not fallback or best <= 0:
            return CropFit(np.zeros(region.shape, bool), "none", float("nan"), best, crop_size, min_inside)
        allowed = pool & (cov >= best - BEST_TOLERANCE) & (cov > 0)
        rule = "centre" if candidates.any() else "cover"
    return CropFit(allowed, rule, float(cov[allowed].min()), best, crop_size, min_inside)


def holds_crop(mask: np.ndarray, crop_size: int, min_inside: float = MIN_INSIDE) -> bool:
    """Whether step 1 of the rule allows some centre: the region holds a crop without a fallback."""
    return fit_centres(mask, crop_size, min_inside, fallback=False).rule == "inside"
