"""A preview picture per image: the input with its regions overlaid, beside each region's kernel."""

from __future__ import annotations

import cv2
import numpy as np

from mkgan_engine.pipeline import Result

# Region colours (RGB), cycled for label maps with many regions.
_COLOURS = np.array([[40, 90, 220], [230, 80, 40], [60, 180, 75], [240, 200, 40], [150, 60, 200], [70, 200, 210]], np.float32) / 255


def overlay_regions(image: np.ndarray, labels: np.ndarray, opacity: float = 0.4) -> np.ndarray:
    """image float32 HxWx3 in [0,1], labels int HxW -> float32 HxWx3 with a colour per label and
    region borders drawn in white."""
    ids = np.unique(labels)
    colour_of = {int(v): _COLOURS[i % len(_COLOURS)] for i, v in enumerate(ids)}
    tint = np.zeros_like(image)
    for label, colour in colour_of.items():
        tint[labels == label] = colour
    out = (1 - opacity) * image + opacity * tint
    edges = cv2.morphologyEx(labels.astype(np.uint16), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    out[edges] = 1.0
    return np.clip(out, 0, 1)


def kernel_tile(kernel: np.ndarray, size: int) -> np.ndarray:
    """A kernel as a size x size float32 RGB heat map (nearest upscaling; brightest tap = 1)."""
    k = kernel / max(float(kernel.max()), 1e-12)
    tile = cv2.resize(k.astype(np.float32), (size, size), interpolation=cv2.INTER_NEAREST)
    heat = cv2.applyColorMap((tile * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)[..., ::-1]
    return heat.astype(np.float32) / 255


def render_preview(result: Result) -> np.ndarray:
    """uint8 BGR picture: LR input with regions | one kernel tile per region (top to bottom)."""
    assert result.image is not None and result.region_map is not None
    left = overlay_regions(result.image.rgb, result.region_map.labels)
    h = left.shape[0]
    n = max(1, len(result.regions))
    tile = max(32, min(h // n - 4, 13 * 12))
    column = np.ones((h, tile + 8, 3), np.float32)
    for i, region in enumerate(result.regions):
        top = 4 + i * (tile + 4)
        if top + tile > h:
            break
        column[top : top + tile, 4 : 4 + tile] = kernel_tile(region.kernel, tile)
        colour = _COLOURS[i % len(_COLOURS)]
        column[top : top + tile, :3] = colour  # colour bar linking the kernel to its region
    picture = np.concatenate([left, column], axis=1)
    return (picture[..., ::-1] * 255).round().astype(np.uint8)
