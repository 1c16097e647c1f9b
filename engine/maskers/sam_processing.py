"""SAM pre- and post-processing shared by every SAM backend (torch, onnxruntime, tensorrt, aoti).

Same transforms as segment_anything's ``ResizeLongestSide`` / ``Sam.preprocess`` /
``Sam.postprocess_masks``, written in numpy + OpenCV so backends that run from exported files need
no segment_anything import:

- :func:`preprocess_image`: resize the longest side to 1024, normalise with SAM's pixel mean/std
  (on 0..255), pad bottom/right to 1024 x 1024 -> :class:`SamInput` (batch + transform).
- :meth:`SamInput.boxes_to_encoder`: boxes in image pixels -> the 1024 encoder frame.
- :func:`postprocess_masks`: low-res logits (N, 1, 256, 256) -> upscale to 1024, crop the padding,
  resize to the image size, threshold at a sigmoid probability -> bool (N, H, W).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from mkgan_engine.backends.base import SAM_IMAGE_SIZE

PIXEL_MEAN = np.array([123.675, 116.28, 103.53], np.float32)
PIXEL_STD = np.array([58.395, 57.12, 57.375], np.float32)

__all__ = [
    "PIXEL_MEAN",
    "PIXEL_STD",
    "SamInput",
    "postprocess_logits",
    "postprocess_masks",
    "preprocess_image",
    "probability_to_logit",
    "resized_shape",
]


def resized_shape(shape: tuple[int, int], long_side: int = SAM_IMAGE_SIZE) -> tuple[int, int]:
    """(H, W) after scaling the longest side to ``long_side`` (rounded like ResizeLongestSide)."""
    h, w = shape
    scale = long_side / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


@dataclass(frozen=True)
class SamInput:
    """A preprocessed SAM encoder input and its transform.

    batch: float32 (1, 3, 1024, 1024) normalised, zero-padded bottom/right (zero = the mean colour
    after normalisation, as SAM pads); image_shape: (H, W) of the original image;
    resized_shape: (h, w) of the image inside the 1024 square (the rest is padding).
    """

    batch: np.ndarray
    image_shape: tuple[int, int]
    resized_shape: tuple[int, int]

    def boxes_to_encoder(self, boxes_xyxy: np.ndarray) -> np.ndarray:
        """Boxes (N, 4) x0, y0, x1, y1 in image pixels -> float32 (N, 4) in the 1024 encoder frame."""
        return boxes_to_encoder(boxes_xyxy, self.image_shape)


def boxes_to_encoder(boxes_xyxy: np.ndarray, image_shape: tuple[int, int], long_side: int = SAM_IMAGE_SIZE) -> np.ndarray:
    """Boxes (N, 4) in image pixels -> the encoder frame (x by new_w / W, y by new_h / H)."""
    h, w = image_shape
    nh, nw = resized_shape(image_shape, long_side)
    b = np.asarray(boxes_xyxy, np.float32).reshape(-1, 4)
    return (b * np.array([nw / w, nh / h, nw / w, nh / h], np.float32)).astype(np.float32)


def preprocess_image(image: np.ndarray, size: int = SAM_IMAGE_SIZE) -> SamInput:
    """Image HxWx3 RGB (float in [0, 1], or uint8) -> :class:`SamInput` for the SAM encoder.

    Resize so the longest side is ``size`` (bilinear up, area down), normalise
    ``(x * 255 - PIXEL_MEAN) / PIXEL_STD``, pad bottom/right with zeros to ``size`` x ``size``.
    """
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must be HxWx3, got shape {img.shape}")
    img255 = img.astype(np.float32) if img.dtype == np.uint8 else img.astype(np.float32) * 255.0
    h, w = img.shape[:2]
    nh, nw = resized_shape((h, w), size)
    if (nh, nw) != (h, w):
        interp = cv2.INTER_AREA if nh < h else cv2.INTER_LINEAR
        img255 = cv2.resize(img255, (nw, nh), interpolation=interp)
    norm = (img255 - PIXEL_MEAN) / PIXEL_STD
    batch = np.zeros((1, 3, size, size), np.float32)
    batch[0, :, :nh, :nw] = norm.transpose(2, 0, 1)
    return SamInput(batch=batch, image_shape=(h, w), resized_shape=(nh, nw))


def probability_to_logit(p: float) -> float:
    """The logit whose sigmoid is ``p`` (p <= 0 -> -inf, p >= 1 -> +inf)."""
    if p <= 0:
        return -math.inf
    if p >= 1:
        return math.inf
    return math.log(p / (1 - p))


def postprocess_logits(low_res: np.ndarray, transform: SamInput) -> np.ndarray:
    """Low-res logits (N, 1, 256, 256) (or (N, 256, 256)) -> float32 logits (N, H, W) at image size.

    Bilinear upscale to 1024 x 1024, crop to the resized image (drop the padding), bilinear resize
    to the original (H, W) - SAM's ``postprocess_masks``.
    """
    lr = np.asarray(low_res, np.float32)
    if lr.ndim == 4:
        if lr.shape[1] != 1:
            raise ValueError(f"expected single-mask logits (N, 1, h, w), got shape {lr.shape}")
        lr = lr[:, 0]
    if lr.ndim != 3:
        raise ValueError(f"expected logits (N, 1, h, w), got shape {np.shape(low_res)}")
    h, w = transform.image_shape
    nh, nw = transform.resized_shape
    size = transform.batch.shape[-1]
    out = np.empty((lr.shape[0], h, w), np.float32)
    for i, m in enumerate(lr):  # N is small (one per detected box); cv2 works per 2-D map
        up = cv2.resize(m, (size, size), interpolation=cv2.INTER_LINEAR)[:nh, :nw]
        out[i] = cv2.resize(up, (w, h), interpolation=cv2.INTER_LINEAR) if (nh, nw) != (h, w) else up
    return out


def postprocess_masks(low_res: np.ndarray, transform: SamInput, threshold: float = 0.5) -> np.ndarray:
    """Low-res logits (N, 1, 256, 256) -> bool masks (N, H, W) at image size.

    A pixel is in the mask when sigmoid(logit) > ``threshold`` (0.5 = logit > 0, SAM's default).
    """
    return postprocess_logits(low_res, transform) > probability_to_logit(threshold)
