"""A preview picture per image: the local blur map (when the masker made one), the input with its
regions overlaid, and each region's kernel."""

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


def blur_heat_map(sigma: np.ndarray, top: float | None = None) -> np.ndarray:
    """float32 HxW local kernel sigma (HR px) -> float32 HxWx3 RGB heat map (0 px blue ... ``top`` px
    red; ``top`` defaults to max(2.5, the 99th percentile)), its scale written in the corner."""
    top = float(top or max(2.5, np.percentile(sigma, 99)))
    scaled = (np.clip(sigma / top, 0, 1) * 255).astype(np.uint8)
    heat = cv2.applyColorMap(scaled, cv2.COLORMAP_JET)
    cv2.putText(heat, f"sigma 0-{top:.1f} px", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return heat[..., ::-1].astype(np.float32) / 255


PREVIEW_MAX_SIDE = 1024  # px: larger inputs are shown downscaled


def render_preview(result: Result) -> np.ndarray:
    """uint8 BGR picture: [local blur map |] LR input with regions | one kernel tile per region (top to
    bottom), the input downscaled to at most :data:`PREVIEW_MAX_SIDE` px. The blur map is the
    masker's ``maps["blur_sigma"]`` (the "blur" masker)."""
    assert result.image is not None and result.region_map is not None
    rgb, labels = result.image.rgb, result.region_map.labels
    sigma = result.region_map.maps.get("blur_sigma")
    factor = PREVIEW_MAX_SIDE / max(rgb.shape[:2])
    if factor < 1:  # a preview is a look, not a copy: its size is bounded whatever the photo's
        size = (max(1, round(rgb.shape[1] * factor)), max(1, round(rgb.shape[0] * factor)))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        labels = cv2.resize(labels.astype(np.int32), size, interpolation=cv2.INTER_NEAREST)
        sigma = None if sigma is None else cv2.resize(np.asarray(sigma, np.float32), size, interpolation=cv2.INTER_AREA)
    left = overlay_regions(rgb, labels)
    if sigma is not None:
        left = np.concatenate([blur_heat_map(sigma), np.ones((left.shape[0], 4, 3), np.float32), left], axis=1)
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
