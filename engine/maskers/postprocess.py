"""Post-processing shared by every masker: raw labels -> clean, blocky, KernelGAN-ready RegionMap.

The one entry point maskers call is :func:`finalize`::

    finalize(labels, config, source, names=None, scores=None, *, clean=True, blocky=True, ...)
        -> RegionMap

``labels`` is either a bool HxW object mask (True = object, becomes label 1) or an integer HxW
label map (0 = background, any other non-negative ids, need not be contiguous). The steps, all at
LR size (HR masks come later from :meth:`RegionMap.upscale`, so LR and HR grids line up exactly):

1. ``clean``: morphological closing of each non-background label (closed pixels are taken only
   from background, never from another label), then each non-background label keeps its largest
   8-connected component; the other components go to background.
2. ``blocky``: nearest-neighbour downscale by ``config.blocky_factor`` and back up. To keep the
   blocks identical everywhere the block side is an integer, ``round(1 / blocky_factor)`` LR
   pixels (0.15 -> 7 px), sampled at each block's centre pixel; blocks start at (0, 0), the
   last row/column of blocks may be partial. Label maps stay constant on every block. The
   largest-component rule runs again afterwards (the resampling can cut a thin neck), which
   keeps the blocks whole.
3. minimum area (always, unless ``config.region_area <= 0``): a region (background included)
   is too small when it has fewer than ``config.region_area`` pixels, or when it holds no
   ``crop x crop`` crop by the trainers' own rule (:func:`mkgan_engine.train.crop_fit.holds_crop`:
   centre in the region, >= 90 % of the crop inside it; ``crop = round(sqrt(min_region_area))``,
   KernelGAN's 64 px by default, clipped to the image), so the trainers find crops in every region
   kept without falling back. Too-small objects go to background; a too-small background is given
   to the nearest object (per pixel). The smallest failing region is merged first, and the rule is
   re-checked until every region passes or one region is left.

Label ids are NOT relabelled: surviving regions keep the ids the caller gave them (so a caller's
per-label names/scores stay valid); ids that disappear are dropped from ``regions``. If only one
region is left the result is :meth:`RegionMap.single` (one label 0 "whole image") with
``fallback_reason`` saying why (every merge message, joined with "; "). Partial merges that still
leave several regions are logged (INFO) but leave ``fallback_reason`` empty.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import cv2
import numpy as np
from scipy import ndimage

from mkgan_engine.config import MaskerConfig
from mkgan_engine.regions import RegionInfo, RegionMap
from mkgan_engine.train.crop_fit import MIN_INSIDE, holds_crop

log = logging.getLogger(__name__)

__all__ = [
    "blockify",
    "block_size",
    "close_labels",
    "crop_side",
    "default_close_radius",
    "enforce_min_area",
    "finalize",
    "keep_largest_components",
    "remove_small_islands",
]


# --------------------------------------------------------------------------------------- helpers
def _as_label_map(labels: np.ndarray) -> tuple[np.ndarray, bool]:
    """int32 label map and whether the input was a bool object mask."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be HxW, got shape {labels.shape}")
    if labels.dtype == bool:
        return labels.astype(np.int32), True
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a bool mask or an integer label map, got dtype {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise ValueError("labels must be non-negative (0 = background)")
    if labels.size and labels.max() > np.iinfo(np.int32).max:
        raise ValueError("label ids must fit in int32")
    return labels.astype(np.int32, copy=True), False


def _present(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted label ids present and their pixel counts."""
    return np.unique(labels, return_counts=True)


def default_close_radius(shape: tuple[int, int]) -> int:
    """Closing radius for an image: 1 % of the short side, at least 1 px (256 -> 3, 512 -> 5)."""
    return max(1, int(round(0.01 * min(shape))))


def block_size(blocky_factor: float) -> int:
    """Side in LR pixels of the blocky mask's blocks (1 = no blocks)."""
    if not blocky_factor or blocky_factor <= 0 or blocky_factor >= 1:
        return 1
    return max(1, int(round(1.0 / blocky_factor)))


def crop_side(min_region_area: int) -> int:
    """Side of the square crop a region must be able to hold (sqrt of the minimum area)."""
    return max(1, int(round(math.sqrt(max(0, min_region_area)))))


# ---------------------------------------------------------------------------------- the steps
def close_labels(labels: np.ndarray, radius: int) -> np.ndarray:
    """Morphological closing of each non-background label with an elliptical kernel of ``radius``.

    Pixels a closing adds are taken from background only (labels never overwrite each other);
    labels are processed in increasing id order. Returns a new int32 map.
    """
    out = labels.copy()
    if radius <= 0:
        return out
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    for lab in _present(labels)[0]:
        if lab == 0:
            continue
        mask = (labels == lab).astype(np.uint8)
        closed = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel).astype(bool)
        out[closed & (out == 0)] = lab
    return out


def keep_largest_components(labels: np.ndarray) -> np.ndarray:
    """Each non-background label keeps its largest 8-connected component; the rest -> background."""
    out = labels.copy()
    for lab in _present(labels)[0]:
        if lab == 0:
            continue
        mask = (labels == lab).astype(np.uint8)
        n, comp, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        if n <= 2:  # background + one component
            continue
        keep = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        out[(comp != keep) & (mask > 0)] = 0
    return out


def blockify(labels: np.ndarray, blocky_factor: float) -> np.ndarray:
    """Nearest-neighbour downscale by ``blocky_factor`` and back up (see the module docstring).

    The result is constant on every ``block_size(blocky_factor)``-sided block starting at (0, 0).
    """
    b = block_size(blocky_factor)
    if b <= 1:
        return labels.copy()
    h, w = labels.shape
    nby, nbx = -(-h // b), -(-w // b)
    ys = np.minimum(np.arange(nby) * b + b // 2, h - 1)
    xs = np.minimum(np.arange(nbx) * b + b // 2, w - 1)
    small = labels[np.ix_(ys, xs)]
    return np.repeat(np.repeat(small, b, axis=0), b, axis=1)[:h, :w].copy()


def _name(names: Mapping[int, str], lab: int) -> str:
    return names.get(lab) or ("background" if lab == 0 else f"region {lab}")


def enforce_min_area(
    labels: np.ndarray,
    min_area: int,
    *,
    crop: int | None = None,
    names: Mapping[int, str] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Merge regions too small for KernelGAN (see the module docstring, step 3).

    Returns the new int32 label map (ids not relabelled) and one human-readable message per merge,
    e.g. "object region of 812 px is below the minimum 4096 px for 64x64 crops".
    """
    out = labels.copy()
    messages: list[str] = []
    if min_area <= 0:
        return out, messages
    names = dict(names or {})
    crop = crop_side(min_area) if crop is None else crop
    for_crops = f"for {crop}x{crop} crops"

    # Objects below the area: all at once (merging objects into background changes no other object).
    ids, counts = _present(out)
    small = [(int(lab), int(n)) for lab, n in zip(ids, counts) if lab != 0 and n < min_area]
    if small and len(ids) > 1:
        for lab, n in sorted(small, key=lambda t: t[1]):
            messages.append(f"{_name(names, lab)} region of {n} px is below the minimum {min_area} px {for_crops}")
        lut_ids = np.array([lab for lab, _ in small])
        out[np.isin(out, lut_ids)] = 0

    while True:
        ids, counts = _present(out)
        if len(ids) <= 1:
            break
        failing = []
        for lab, n in zip(ids.tolist(), counts.tolist()):
            if n < min_area:
                failing.append((n, lab, f"{_name(names, lab)} region of {n} px is below the minimum {min_area} px {for_crops}"))
            elif not holds_crop(out == lab, max(1, min(crop, *out.shape))):
                failing.append((n, lab, f"{_name(names, lab)} region of {n} px has no {crop}x{crop} window "
                                        f"centred in it that is {MIN_INSIDE:.0%} inside it (too thin or scattered for the trainers' crops)"))
        if not failing:
            break
        n, lab, message = min(failing)
        messages.append(message)
        if lab != 0:
            out[out == lab] = 0
        else:  # background -> nearest object, per pixel
            _, (iy, ix) = ndimage.distance_transform_edt(out == 0, return_indices=True)
            out = out[iy, ix]
    return out, messages


def remove_small_islands(mask: np.ndarray, min_size: int, *, fill_holes: bool = True) -> np.ndarray:
    """bool mask without 8-connected islands below ``min_size`` px and, if ``fill_holes``, without
    4-connected holes below ``min_size`` px (holes touching the border count as holes too)."""
    mask = np.asarray(mask, bool)
    if min_size <= 1:
        return mask.copy()

    def drop(m: np.ndarray, connectivity: int) -> np.ndarray:
        n, comp, stats, _ = cv2.connectedComponentsWithStats(m.astype(np.uint8), connectivity=connectivity)
        keep = stats[:, cv2.CC_STAT_AREA] >= min_size
        keep[0] = False
        return keep[comp]

    out = drop(mask, 8)
    if fill_holes:
        out = ~drop(~out, 4)
    return out


# ------------------------------------------------------------------------------- entry point
def finalize(
    labels: np.ndarray,
    config: MaskerConfig,
    source: str,
    names: Mapping[int, str] | None = None,
    scores: Mapping[int, float | None] | None = None,
    *,
    clean: bool = True,
    blocky: bool = True,
    close_radius: int | None = None,
    crop_size: int | None = None,
    empty_reason: str | None = None,
) -> RegionMap:
    """Raw masker output -> post-processed :class:`RegionMap` at the same (LR) size.

    labels: bool HxW object mask (True -> label 1 "object") or integer HxW label map (0 =
    background, other ids kept as given). config: uses ``blocky_factor`` and ``region_area``.
    source: what produced the regions ("fft", "yolo-sam", "user", ...), stored in every RegionInfo.
    names / scores: optional per-label name and confidence (missing -> "background" for 0,
    "object" when the input has one object label, else "region <id>"; score None).
    clean: closing (radius ``close_radius``, default :func:`default_close_radius`) + largest
    component per label. blocky: the block resampling of ``config.blocky_factor``. crop_size: the
    crop a region must hold (default ``round(sqrt(min_region_area))``). empty_reason:
    fallback_reason when the input has no object pixel (default "nothing detected").

    Steps and the single-region fallback are described in the module docstring.
    """
    lab, was_bool = _as_label_map(labels)
    shape = lab.shape
    input_ids = _present(lab)[0]
    names = dict(names or {})
    if was_bool:
        names.setdefault(1, "object")
    object_ids = [int(i) for i in input_ids if i != 0]
    if len(object_ids) == 1:
        names.setdefault(object_ids[0], "object")
    names.setdefault(0, "background")
    scores = dict(scores or {})

    if not object_ids:
        return RegionMap.single(shape, source, empty_reason or "nothing detected")
    if len(input_ids) == 1:  # one object label covering everything
        return RegionMap.single(shape, source, f"{_name(names, object_ids[0])} covers the whole image (no background)")

    if clean:
        radius = default_close_radius(shape) if close_radius is None else close_radius
        lab = keep_largest_components(close_labels(lab, radius))
    if blocky and block_size(config.blocky_factor) > 1:
        lab = blockify(lab, config.blocky_factor)
        if clean:
            lab = keep_largest_components(lab)
        if not (_present(lab)[0] != 0).any():
            b = block_size(config.blocky_factor)
            return RegionMap.single(shape, source, f"the object region vanished in the {b}x{b} px blocky mask (too thin)")

    lab, messages = enforce_min_area(lab, config.region_area, crop=crop_size, names=names)
    ids = [int(i) for i in _present(lab)[0]]
    if len(ids) <= 1:
        reason = "; ".join(messages) or "only one region left after post-processing"
        return RegionMap.single(shape, source, reason)
    if messages:
        log.info("%s masker: merged small regions: %s", source, "; ".join(messages))
    regions = [RegionInfo(label=i, name=_name(names, i), source=source, score=scores.get(i)) for i in ids]
    return RegionMap(lab, regions)
