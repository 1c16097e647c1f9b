"""User-supplied masks: a PNG per image in ``mask_dir`` that bypasses the masker.

``load_user_mask(mask_dir, stem, shape, config) -> RegionMap | None``

* File: ``<stem>_mask.png`` or ``<stem>.png`` in ``mask_dir`` (the ``_mask`` name wins when both
  exist, so a mask_dir that also holds the images themselves still works; the suffix may be in
  any case). No file -> ``None`` (the caller then uses the configured masker).
* Pixels: single-channel 8- or 16-bit PNG. An RGB(A) PNG is converted to grey (exactly, when its
  colour channels are equal; else with :func:`mkgan_engine.imageio.luma`, rounded); an RGBA PNG
  whose colour is constant is read from its alpha channel (a mask painted as transparency).
* Meaning: at most two distinct values -> binary, value > 0 = object (label 1); more than two
  distinct values -> a label map, each value is a region id (0 = background), ids kept as they
  are (not relabelled; 16-bit ids work). Anti-aliased edges of a binary mask therefore become
  tiny regions that the minimum-area rule merges into background.
* Validation: the mask must have the image's LR size exactly (H x W); otherwise a ``ValueError``
  names both sizes (masks are never resized: a resized mask would silently shift region borders).
  An all-zero or all-object mask -> one region with fallback_reason "user mask has an empty
  region". An unreadable file -> ``ValueError``.
* Post-processing: only the minimum-area rule of
  :func:`~mkgan_engine.maskers.postprocess.finalize`. The user's mask is respected otherwise: no
  closing, no largest-component filtering and no blocky resampling.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from mkgan_engine.config import MaskerConfig
from mkgan_engine.imageio import luma
from mkgan_engine.maskers.postprocess import finalize
from mkgan_engine.regions import RegionMap

SOURCE = "user"

__all__ = ["SOURCE", "find_user_mask", "load_user_mask", "read_mask_values"]


def find_user_mask(mask_dir: Path, stem: str) -> Path | None:
    """``<stem>_mask.png`` or ``<stem>.png`` in ``mask_dir`` (suffix case-insensitive), or None."""
    mask_dir = Path(mask_dir)
    if not mask_dir.is_dir():
        return None
    for name in (f"{stem}_mask", stem):
        for suffix in (".png", ".PNG", ".Png"):
            candidate = mask_dir / f"{name}{suffix}"
            if candidate.is_file():
                return candidate
    # Other capitalisations of the suffix (".pNg"...), without listing big folders needlessly.
    wanted = {f"{stem}_mask.png", f"{stem}.png"}
    matches = sorted((p for p in mask_dir.iterdir() if p.name.lower() in {w.lower() for w in wanted} and p.is_file()),
                     key=lambda p: not p.stem.endswith("_mask"))
    return matches[0] if matches else None


def read_mask_values(path: Path) -> np.ndarray:
    """Integer HxW values of a mask PNG (uint8 or uint16), converted to grey when it has colour."""
    data = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if data is None:
        raise ValueError(f"user mask {path}: not a readable image (corrupt or unsupported format)")
    if data.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"user mask {path}: unsupported pixel type {data.dtype} (use an 8- or 16-bit PNG)")
    if data.ndim == 2:
        return data
    channels = data.shape[2]
    if channels == 1:
        return data[..., 0]
    if channels == 2:  # grey + alpha
        grey, alpha = data[..., 0], data[..., 1]
        return alpha if (grey == grey.flat[0]).all() and not (alpha == alpha.flat[0]).all() else grey
    colour = data[..., :3]
    if channels == 4 and (colour == colour[:1, :1]).all():
        alpha = data[..., 3]
        if not (alpha == alpha.flat[0]).all():
            return alpha
    if (colour[..., 0] == colour[..., 1]).all() and (colour[..., 1] == colour[..., 2]).all():
        return colour[..., 0]
    return np.rint(luma(colour[..., ::-1], np.float64)).astype(data.dtype)  # BGR -> RGB


def load_user_mask(mask_dir: Path, stem: str, shape: tuple[int, int], config: MaskerConfig) -> RegionMap | None:
    """The user's RegionMap for image ``stem`` at LR size ``shape`` (H, W), or None without a file.

    See the module docstring for the file names, value meanings, validation and post-processing.
    Raises ValueError for an unreadable mask or one whose size differs from ``shape``.
    """
    path = find_user_mask(Path(mask_dir), stem)
    if path is None:
        return None
    values = read_mask_values(path)
    h, w = int(shape[0]), int(shape[1])
    if values.shape != (h, w):
        mh, mw = values.shape
        raise ValueError(f"user mask {path} is {mw}x{mh} px (WxH) but the image is {w}x{h} px; "
                         f"the mask must have the image's size (at the low-resolution input's size)")
    distinct = np.unique(values)
    if len(distinct) <= 2:
        labels = values > 0
        if labels.all() or not labels.any():
            what = "no object (all zero)" if not labels.any() else "no background (every value > 0)"
            return RegionMap.single((h, w), SOURCE, f"user mask has an empty region: {what} in {path.name}")
        names = None
    else:
        labels = values.astype(np.int32)
        names = {0: "background"}
    return finalize(labels, config, SOURCE, names=names, clean=False, blocky=False)
