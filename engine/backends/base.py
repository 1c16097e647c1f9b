"""One small interface per model; backends (torch, onnxruntime, tensorrt, aoti) differ only in the
forward pass. Pre- and post-processing (letterbox, NMS, SAM resize/normalise/pad, mask upscaling)
are shared and live outside the backends.

All arrays are numpy, float32 unless stated; batch dimension first. The SAM sizes below are the
one definition of SAM's tensor geometry (pre-/post-processing, backends and export use them).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from mkgan_engine.backends.manifest import locate_artefact

SAM_IMAGE_SIZE = 1024
"""Side of SAM's (square, padded) encoder input, in pixels: the "1024 encoder frame"."""
SAM_EMBED_SIZE = 64
"""Side of SAM's image embedding grid (SAM_IMAGE_SIZE / 16)."""
SAM_LOWRES_SIZE = 256
"""Side of SAM's low-resolution mask logits (4 x the embedding grid)."""


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


class ExportedModel:
    """Loading shared by the exported-file backends: ``file_format`` is the manifest's format
    ("onnx", "engine", "aoti"), ``default_device`` the device used when none is given."""

    file_format: str
    default_device: str | None = None

    @classmethod
    def from_dir(cls, engines_dir, model: str, device: str | None = None, weights=None, **kwargs):
        """Load ``model`` (yolo|sam_encoder|sam_decoder) from an engines dir via its manifest,
        checking the source weights' sha256 when ``weights`` is given."""
        path, artefact = locate_artefact(engines_dir, model, cls.file_format, weights)
        return cls(path, device=device or cls.default_device, artefact=artefact, **kwargs)


class ExportedDetector:
    """:class:`DetectorBackend` call shared by the exported-file backends (onnxruntime, tensorrt,
    aoti): they provide ``input_size`` and ``run(*arrays) -> list of float32 outputs``."""

    input_size: int

    def __call__(self, images: np.ndarray) -> np.ndarray:
        if images.ndim != 4 or images.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(f"detector input must be (1, 3, {self.input_size}, {self.input_size}), got {images.shape}")
        return self.run(images)[0]  # type: ignore[attr-defined]


class ExportedSamEncoder:
    """:class:`SamEncoderBackend` call shared by the exported-file backends."""

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if image.shape[-3:] != (3, SAM_IMAGE_SIZE, SAM_IMAGE_SIZE):
            raise ValueError(f"SAM encoder input must be (1, 3, {SAM_IMAGE_SIZE}, {SAM_IMAGE_SIZE}), got {image.shape}")
        return self.run(image)[0]  # type: ignore[attr-defined]


class ExportedSamDecoder:
    """:class:`SamDecoderBackend` call shared by the exported-file backends: N boxes in calls of at
    most :meth:`max_boxes` (what the exported file accepts; None = any number)."""

    def max_boxes(self) -> int | None:
        return None

    def __call__(self, embeddings: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        if len(boxes) == 0:
            return np.zeros((0, 1, SAM_LOWRES_SIZE, SAM_LOWRES_SIZE), np.float32), np.zeros((0, 1), np.float32)
        step = self.max_boxes() or len(boxes)
        parts = [self.run(embeddings, boxes[i : i + step]) for i in range(0, len(boxes), step)]  # type: ignore[attr-defined]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
