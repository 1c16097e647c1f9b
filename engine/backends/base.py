"""One small interface per model; backends (torch, onnxruntime, tensorrt, aoti) differ only in the
forward pass. Pre- and post-processing (letterbox, NMS, SAM resize/normalise/pad, mask upscaling)
are shared and live outside the backends.

All arrays are numpy, float32 unless stated; batch dimension first.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class DetectorBackend(Protocol):
    """YOLOv8 forward pass.

    __call__(images): float32 (1, 3, S, S) letterboxed RGB in [0, 1], S = input_size ->
    raw predictions float32 (1, 4 + num_classes, A): rows cx, cy, w, h (in input pixels) then class
    scores in [0, 1], for A anchors (ultralytics' export layout, before NMS).
    """

    name: str
    input_size: int

    def __call__(self, images: np.ndarray) -> np.ndarray: ...


@runtime_checkable
class SamEncoderBackend(Protocol):
    """SAM image encoder: float32 (1, 3, 1024, 1024) normalised and padded -> embeddings (1, 256, 64, 64)."""

    name: str

    def __call__(self, image: np.ndarray) -> np.ndarray: ...


@runtime_checkable
class SamDecoderBackend(Protocol):
    """SAM prompt encoder + mask decoder for N box prompts, single-mask output.

    __call__(embeddings (1, 256, 64, 64), boxes (N, 4) x0,y0,x1,y1 in the 1024-px encoder frame) ->
    (low-res mask logits (N, 1, 256, 256), predicted IoU (N, 1)). All N boxes go in one call.
    """

    name: str

    def __call__(self, embeddings: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...
