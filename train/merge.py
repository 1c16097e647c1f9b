"""Seamless merge of per-region super-resolved images (design.md section 4: "merge regions with a
feathered (not hard) mask at HR so no seam shows").

Every region's ZSSR output covers the whole image; :func:`merge_regions` blends them with soft
per-region weights from :func:`feather_weights`:

- each region gets a *signed distance* to its boundary (positive inside, negative outside, zero
  half-way between the two pixel centres either side of the boundary), from exact Euclidean
  distance transforms;
- the distance is mapped through a cubic smoothstep over ``[-radius_px, +radius_px]`` (0 outside,
  1 inside), and the weights are renormalised to sum to 1 at every pixel.

So a pixel at least ``radius_px`` (+0.5) away from any other region has exactly its hard-mask
weights (1 for its region, 0 for the others), and across a boundary the weights ramp smoothly over
about ``2 * radius_px`` pixels (at most ``0.75 / radius_px`` change per pixel; across a straight
two-region boundary the two raw weights already sum to one). Any number of labels works; a label
with no pixels gets zero weight everywhere. Pixels whose label is not in ``label_ids`` are first
given the label of the nearest listed region.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
from scipy import ndimage

__all__ = ["default_radius", "feather_weights", "merge_regions"]

#: Default feather radius: 4 HR pixels per unit of scale (x2 -> 8, x4 -> 16), and at least 1% of
#: the shorter HR side for large images (a 2040x1356 HR image -> 13.6 px).
RADIUS_PER_SCALE = 4.0
RADIUS_FRACTION = 0.01


def default_radius(shape_hr: Sequence[int], scale: Optional[int] = None) -> float:
    """Feather radius in HR pixels: ``max(4 * scale, 0.01 * min(H, W))``; scale defaults to 2."""
    h, w = int(shape_hr[0]), int(shape_hr[1])
    s = 2 if scale is None else int(scale)
    return float(max(RADIUS_PER_SCALE * s, RADIUS_FRACTION * min(h, w)))


def _to_numpy(array: Any) -> np.ndarray:
    if hasattr(array, "detach"):  # torch.Tensor, without importing torch here
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def _smoothstep(t: np.ndarray) -> np.ndarray:
    """Cubic smoothstep of t in [-1, 1] -> [0, 1] (0 below -1, 1 above 1)."""
    x = np.clip((t + 1.0) * 0.5, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _resolve_labels(labels: np.ndarray, ids: list[int]) -> np.ndarray:
    """Give pixels whose label is not in ids the label of the nearest pixel whose label is."""
    known = np.isin(labels, ids)
    if known.all():
        return labels
    if not known.any():
        raise ValueError(f"none of the labels {ids} occurs in the label map (labels present: {np.unique(labels).tolist()})")
    nearest = ndimage.distance_transform_edt(~known, return_distances=False, return_indices=True)
    return labels[tuple(nearest)]


def _signed_distance(mask: np.ndarray, limit: float) -> np.ndarray:
    """Signed Euclidean distance to the mask's boundary, clipped to [-limit, limit] (float32).

    Inside pixels: (distance to the nearest outside pixel) - 0.5; outside pixels: 0.5 - (distance
    to the nearest inside pixel). Exact up to the clip, but computed only on tiles (plus a halo
    wider than ``limit``) that contain both inside and outside pixels: elsewhere the clipped
    value is a constant, and a nearest opposite pixel within the halo is always inside the window.
    Cost scales with the boundary's length, not the image's area.
    """
    h, w = mask.shape
    halo = int(np.ceil(limit + 0.5)) + 1
    tile = max(128, 4 * halo)
    out = np.where(mask, np.float32(limit), np.float32(-limit))
    for y0 in range(0, h, tile):
        for x0 in range(0, w, tile):
            y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
            wy0, wx0 = max(y0 - halo, 0), max(x0 - halo, 0)
            wy1, wx1 = min(y1 + halo, h), min(x1 + halo, w)
            window = mask[wy0:wy1, wx0:wx1]
            if window.all() or not window.any():
                continue
            inside = ndimage.distance_transform_edt(window)
            outside = ndimage.distance_transform_edt(~window)
            signed = np.where(window, inside - 0.5, 0.5 - outside)
            core = signed[y0 - wy0:y1 - wy0, x0 - wx0:x1 - wx0]
            out[y0:y1, x0:x1] = np.clip(core, -limit, limit)
    return out


def feather_weights(labels_hr: Any, label_ids: Sequence[int], radius_px: float) -> np.ndarray:
    """Soft per-region weights that sum to 1 at every pixel.

    labels_hr: int HxW label map at HR size (numpy or torch); label_ids: the L labels, in the
    order of the returned weights; radius_px: half-width of the blend band in pixels (0 gives the
    hard masks). Returns float32 (L, H, W); see the module docstring for the exact definition.
    Raises ValueError when no listed label occurs in the map or label_ids repeats a label.
    """
    labels = _to_numpy(labels_hr)
    if labels.ndim != 2:
        raise ValueError(f"labels_hr must be HxW, got shape {labels.shape}")
    ids = [int(i) for i in label_ids]
    if len(set(ids)) != len(ids):
        raise ValueError(f"label_ids must be distinct, got {ids}")
    labels = _resolve_labels(labels.astype(np.int64, copy=False), ids)
    h, w = labels.shape
    weights = np.zeros((len(ids), h, w), np.float32)
    radius = float(radius_px)
    if radius < 0:
        raise ValueError(f"radius_px must be >= 0, got {radius_px}")
    for index, label in enumerate(ids):
        mask = labels == label
        if not mask.any():
            continue  # absent region: zero weight
        if mask.all() or radius == 0.0:
            weights[index] = mask
            continue
        weights[index] = _smoothstep(_signed_distance(mask, radius) / radius)
    # Each pixel's own region has signed distance >= 0.5 -> raw weight > 0.5, so the sum is > 0.5.
    total = weights.sum(axis=0)
    weights /= total[None]
    return weights


def merge_regions(
    sr_images: Sequence[Any],
    labels_hr: Any,
    label_ids: Sequence[int],
    radius_px: Optional[float] = None,
    scale: Optional[int] = None,
) -> np.ndarray:
    """Blend per-region SR results with feathered masks.

    sr_images: one HxWxC (or HxW) float image per label in label_ids (numpy or torch, all the same
    shape; the entry of a label with no pixels may be None); labels_hr: int HxW label map at the
    same HR size (e.g. ``RegionMap.upscale(scale)``); radius_px: blend half-width in HR pixels,
    default :func:`default_radius` (``max(4 * scale, 1% of the shorter side)``, scale defaulting
    to 2). Returns float32 HxWxC (or HxW): sum over regions of weight * image, a convex
    combination of the inputs at every pixel (inputs in [0, 1] give an output in [0, 1]).
    """
    ids = list(label_ids)
    if len(sr_images) != len(ids):
        raise ValueError(f"got {len(sr_images)} images for {len(ids)} labels")
    labels = _to_numpy(labels_hr)
    if labels.ndim != 2:
        raise ValueError(f"labels_hr must be HxW, got shape {labels.shape}")
    radius = default_radius(labels.shape, scale) if radius_px is None else float(radius_px)
    weights = feather_weights(labels, ids, radius)
    out: Optional[np.ndarray] = None
    for weight, image in zip(weights, sr_images):
        if not weight.any():
            continue
        if image is None:
            raise ValueError("an image is None for a region that has pixels")
        img = _to_numpy(image).astype(np.float32, copy=False)
        if img.shape[:2] != labels.shape or img.ndim not in (2, 3):
            raise ValueError(f"image shape {img.shape} does not match the label map {labels.shape} (HxW[xC])")
        term = img * (weight[..., None] if img.ndim == 3 else weight)
        if out is None:
            out = term
        else:
            if out.shape != term.shape:
                raise ValueError(f"images differ in shape: {out.shape} vs {term.shape}")
            out += term
    assert out is not None  # feather_weights guarantees some region has pixels
    return out
