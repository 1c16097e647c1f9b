"""The ``onnxruntime`` backend: the ONNX files written by ``mkgan-engine export --format onnx``.

Needs only ``onnxruntime`` + numpy (no torch model code, no ultralytics / segment_anything).
Execution provider: with a CUDA device (``cuda``, ``cuda:N``, ``auto``) the CUDAExecutionProvider is
requested when the installed onnxruntime has it (``onnxruntime-gpu``), else the CPU one. A provider
can be "available" and still fail to load (missing CUDA/cuDNN libraries: ONNX Runtime then falls
back silently), so after creating the session we read ``session.get_providers()`` - what actually
runs - log it, and warn when CUDA was asked for but the session runs on CPU. ``provider`` holds it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from mkgan_engine.backends.base import ExportedDetector, ExportedModel, ExportedSamDecoder, ExportedSamEncoder
from mkgan_engine.backends.manifest import Artefact

log = logging.getLogger(__name__)

__all__ = ["OnnxRuntimeDetector", "OnnxRuntimeModel", "OnnxRuntimeSamDecoder", "OnnxRuntimeSamEncoder", "ort_providers"]


def _wants_cuda(device: str | None) -> tuple[bool, int]:
    dev = str(device or "cpu")
    if dev == "auto" or dev.startswith("cuda"):
        return True, int(dev.split(":", 1)[1]) if ":" in dev else 0
    return False, 0


def ort_providers(device: str | None) -> list:
    """Providers to request for ``device`` (CUDA first when wanted and installed, CPU always last)."""
    import onnxruntime as ort

    cuda, index = _wants_cuda(device)
    available = ort.get_available_providers()
    providers: list = []
    if cuda and "CUDAExecutionProvider" in available:
        providers.append(("CUDAExecutionProvider", {"device_id": index}))
    elif cuda and str(device) != "auto":
        log.warning("device %s: this onnxruntime has no CUDAExecutionProvider (pip install onnxruntime-gpu); "
                    "running ONNX models on CPU", device)
    providers.append("CPUExecutionProvider")
    return providers


class OnnxRuntimeModel(ExportedModel):
    """One InferenceSession on any exported ONNX file: ``run(*float32 arrays) -> list of float32 outputs``
    (in the file's input/output order). The model-specific classes below add the protocol calls;
    the exporter runs this directly for its parity checks."""

    name = "onnxruntime"
    file_format = "onnx"
    default_device = "cpu"

    def __init__(self, path: Path | str, device: str | None = "cpu", artefact: Artefact | None = None,
                 threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("backend onnxruntime needs onnxruntime: pip install 'mkgan-engine[onnx]' "
                              "(or onnxruntime-gpu for CUDA)") from e
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: ONNX file not found")
        self.artefact = artefact
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = int(threads)
        requested = ort_providers(device)
        self.session = ort.InferenceSession(str(self.path), options, providers=requested)
        self.providers: list[str] = list(self.session.get_providers())
        self.provider = self.providers[0] if self.providers else "?"
        wanted_cuda = any(isinstance(p, tuple) and p[0] == "CUDAExecutionProvider" for p in requested)
        if wanted_cuda and self.provider != "CUDAExecutionProvider":
            log.warning("%s: CUDAExecutionProvider was requested but the session runs on %s "
                        "(CUDA/cuDNN libraries not found?)", self.path.name, self.provider)
        else:
            log.info("%s: ONNX Runtime %s runs on %s", self.path.name, ort.__version__, self.provider)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, *arrays: np.ndarray) -> list[np.ndarray]:
        feeds = {n: np.ascontiguousarray(a, dtype=np.float32) for n, a in zip(self.input_names, arrays)}
        return [np.asarray(o, dtype=np.float32) for o in self.session.run(self.output_names, feeds)]


class OnnxRuntimeDetector(ExportedDetector, OnnxRuntimeModel):
    """:class:`~mkgan_engine.backends.base.DetectorBackend` on ``yolo.onnx``: (1, 3, S, S) -> (1, 4 + nc, A)."""

    model = "yolo"

    def __init__(self, path: Path | str, device: str | None = "cpu", artefact: Artefact | None = None,
                 threads: int | None = None) -> None:
        super().__init__(path, device, artefact, threads)
        shape = self.session.get_inputs()[0].shape
        size = shape[-1] if isinstance(shape[-1], int) else (artefact.extra.get("imgsz") if artefact else None)
        if not isinstance(size, int):
            raise ValueError(f"{self.path.name}: cannot tell the detector input size from {shape}")
        self.input_size = int(size)
        out = self.session.get_outputs()[0].shape
        self.num_classes = int(out[1]) - 4 if isinstance(out[1], int) else None


class OnnxRuntimeSamEncoder(ExportedSamEncoder, OnnxRuntimeModel):
    """:class:`~mkgan_engine.backends.base.SamEncoderBackend` on ``sam_encoder.onnx``."""

    model = "sam_encoder"


class OnnxRuntimeSamDecoder(ExportedSamDecoder, OnnxRuntimeModel):
    """:class:`~mkgan_engine.backends.base.SamDecoderBackend` on ``sam_decoder.onnx`` (dynamic N boxes)."""

    model = "sam_decoder"
