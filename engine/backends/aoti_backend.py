"""The ``aoti`` backend: torch AOTInductor packages (``.pt2``) written by ``mkgan-engine export --format aoti``.

Loaded with ``torch._inductor.aoti_load_package`` (compiled C++/CUDA kernels + weights; no Python
model code, no ultralytics / segment_anything). A package is compiled for one device type: a CPU
package runs on CPU, a CUDA package on a CUDA device (``device_index`` picks which). The packages take
and return fp32 tensors (fp16 packages cast inside). The decoder package has a dynamic number of
boxes in 1..max (recorded in the manifest); more boxes are run in chunks.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from mkgan_engine.backends.base import ExportedDetector, ExportedModel, ExportedSamDecoder, ExportedSamEncoder
from mkgan_engine.backends.manifest import Artefact

log = logging.getLogger(__name__)

__all__ = ["AotiDetector", "AotiModel", "AotiSamDecoder", "AotiSamEncoder"]


class AotiModel(ExportedModel):
    """One AOTInductor package on any exported model: ``run(*float32 arrays) -> list of float32
    outputs``. The model-specific classes below add the protocol calls; the exporter runs this
    directly for its parity checks."""

    name = "aoti"
    file_format = "aoti"

    def __init__(self, path: Path | str, device: str | None = None, artefact: Artefact | None = None) -> None:
        import torch

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: AOTInductor package not found")
        self.artefact = artefact
        built_for = torch.device(artefact.device if artefact else ("cuda" if str(device).startswith("cuda") else "cpu"))
        want = torch.device(built_for.type if device in (None, "auto") else device)
        if want.type != built_for.type:
            raise RuntimeError(f"{self.path.name} was compiled for {built_for.type}, not {want.type}: re-export with "
                               f"mkgan-engine export --format aoti --device {want.type}")
        if want.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"{self.path.name} is a CUDA package but no CUDA device is available")
        self.device = want if want.type == "cpu" or want.index is not None else torch.device("cuda", torch.cuda.current_device())
        from torch._inductor import aoti_load_package

        kwargs = {"device_index": self.device.index} if self.device.type == "cuda" else {}
        try:
            self.model = aoti_load_package(str(self.path), **kwargs)
        except Exception as e:
            built = artefact.tool_versions.get("torch") if artefact else "?"
            raise RuntimeError(f"could not load {self.path.name} with torch {torch.__version__} (compiled with torch "
                               f"{built}): {type(e).__name__}: {e}; re-export with mkgan-engine export --format aoti") from e
        self._torch = torch
        log.info("%s: AOTInductor package on %s", self.path.name, self.device)

    def run(self, *arrays: np.ndarray) -> list[np.ndarray]:
        torch = self._torch
        tensors = [torch.from_numpy(np.ascontiguousarray(a, np.float32)).to(self.device) for a in arrays]
        with torch.inference_mode():
            out = self.model(*tensors)
        if not isinstance(out, (list, tuple)):
            out = [out]
        return [o.detach().float().cpu().numpy() for o in out]


class AotiDetector(ExportedDetector, AotiModel):
    """:class:`~mkgan_engine.backends.base.DetectorBackend` on ``yolo.pt2``."""

    model = "yolo"

    def __init__(self, path: Path | str, device: str | None = None, artefact: Artefact | None = None,
                 input_size: int | None = None) -> None:
        super().__init__(path, device, artefact)
        size = input_size or (artefact.extra.get("imgsz") if artefact else None)
        if size is None and artefact is not None:
            size = artefact.inputs[0].shape[-1]
        if not isinstance(size, int):
            raise ValueError(f"{self.path.name}: detector input size unknown (pass input_size)")
        self.input_size = int(size)


class AotiSamEncoder(ExportedSamEncoder, AotiModel):
    """:class:`~mkgan_engine.backends.base.SamEncoderBackend` on ``sam_encoder.pt2``."""

    model = "sam_encoder"


class AotiSamDecoder(ExportedSamDecoder, AotiModel):
    """:class:`~mkgan_engine.backends.base.SamDecoderBackend` on ``sam_decoder.pt2`` (N boxes, chunked past the max)."""

    model = "sam_decoder"

    def max_boxes(self) -> int | None:
        value = self.artefact.extra.get("max_boxes") if self.artefact else None
        return int(value) if value else None
