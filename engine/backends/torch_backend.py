"""The ``torch`` backend: eager PyTorch on CPU or CUDA (fp16 on CUDA by default), running the
modules of :mod:`mkgan_engine.backends.torch_modules` behind the numpy protocols of
:mod:`mkgan_engine.backends.base`.

Build from the user's weights with :func:`load_torch_backends` (or the ``from_*`` constructors), or
wrap already-built ultralytics / segment_anything models directly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from mkgan_engine.backends.torch_modules import (
    DetectorModule,
    SamBoxDecoderModule,
    SamEncoderModule,
    load_sam,
    load_yolo,
    yolo_input_size,
)

__all__ = ["TorchDetector", "TorchSamDecoder", "TorchSamEncoder", "load_torch_backends"]


def _device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cpu")
    if isinstance(device, torch.device):
        return device
    from mkgan_engine.device import resolve_device

    return resolve_device(device)


def _half(half: bool | None, device: torch.device) -> bool:
    """fp16 only on CUDA; None = on for CUDA."""
    if device.type != "cuda":
        return False
    return True if half is None else bool(half)


class _TorchRunner:
    """Shared plumbing: module on device (fp16 on CUDA if asked), numpy in -> numpy float32 out."""

    def __init__(self, module: nn.Module, device: str | torch.device | None, half: bool | None) -> None:
        self.device = _device(device)
        self.half = _half(half, self.device)
        self.dtype = torch.float16 if self.half else torch.float32
        module = module.eval().to(self.device)
        self.module = module.half() if self.half else module.float()

    def _in(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, np.float32)).to(self.device, self.dtype)

    @staticmethod
    def _out(t: torch.Tensor) -> np.ndarray:
        return t.detach().float().cpu().numpy()


class TorchDetector(_TorchRunner):
    """:class:`~mkgan_engine.backends.base.DetectorBackend` on an ultralytics DetectionModel.

    model: a DetectionModel (or an already wrapped :class:`DetectorModule`); input_size: the square
    letterbox side S (default: the model's training imgsz, else 640).
    """

    name = "torch"

    def __init__(self, model: nn.Module, input_size: int | None = None, device: str | torch.device | None = "cpu",
                 half: bool | None = None) -> None:
        module = model if isinstance(model, DetectorModule) else DetectorModule(model)
        self.input_size = int(input_size or yolo_input_size(module.model))
        self.num_classes = module.num_classes
        super().__init__(module, device, half)

    @classmethod
    def from_weights(cls, weights: Path | str | None, input_size: int | None = None,
                     device: str | torch.device | None = "cpu", half: bool | None = None) -> "TorchDetector":
        dev = _device(device)
        return cls(load_yolo(weights, dev), input_size=input_size, device=dev, half=half)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        if images.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(f"detector input must be (1, 3, {self.input_size}, {self.input_size}), got {images.shape}")
        with torch.inference_mode():
            return self._out(self.module(self._in(images)))


class TorchSamEncoder(_TorchRunner):
    """:class:`~mkgan_engine.backends.base.SamEncoderBackend` on a segment_anything ``Sam``."""

    name = "torch"

    def __init__(self, sam: nn.Module, device: str | torch.device | None = "cpu", half: bool | None = None) -> None:
        module = sam if isinstance(sam, SamEncoderModule) else SamEncoderModule(sam)
        super().__init__(module, device, half)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self._out(self.module(self._in(image)))


class TorchSamDecoder(_TorchRunner):
    """:class:`~mkgan_engine.backends.base.SamDecoderBackend` on a segment_anything ``Sam``.

    All N boxes go through the prompt encoder and mask decoder in one batched call.
    """

    name = "torch"

    def __init__(self, sam: nn.Module, device: str | torch.device | None = "cpu", half: bool | None = None) -> None:
        module = sam if isinstance(sam, SamBoxDecoderModule) else SamBoxDecoderModule(sam)
        super().__init__(module, device, half)

    def __call__(self, embeddings: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        with torch.inference_mode():
            # Box coordinates stay fp32 until the positional encoding (fp16 would lose ~0.5 px at 1024).
            b = torch.from_numpy(np.ascontiguousarray(boxes)).to(self.device)
            masks, iou = self.module(self._in(embeddings), b)
            return self._out(masks), self._out(iou)


def load_torch_backends(
    yolo_weights: Path | str | None,
    sam_checkpoint: Path | str | None,
    sam_type: str = "vit_b",
    device: str | torch.device | None = "cpu",
    half: bool | None = None,
    *,
    detector: bool = True,
) -> tuple[TorchDetector | None, TorchSamEncoder, TorchSamDecoder]:
    """(detector, encoder, decoder) from the user's YOLO .pt and SAM .pth (SAM loaded once, shared).

    ``detector=False`` skips YOLO (the SAM-only masker) and returns None in its place.
    """
    dev = _device(device)
    det = TorchDetector.from_weights(yolo_weights, device=dev, half=half) if detector else None
    sam = load_sam(sam_checkpoint, sam_type, dev)
    return det, TorchSamEncoder(sam, dev, half), TorchSamDecoder(sam, dev, half)
