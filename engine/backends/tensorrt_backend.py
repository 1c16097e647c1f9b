"""The ``tensorrt`` backend: engines (serialized plans) written by ``mkgan-engine export --format engine``.

``import tensorrt`` happens inside the constructor (so importing this module is free). I/O buffers
are torch CUDA tensors; the documented TensorRT 10/11 name-based API runs them:

    runtime = trt.Runtime(logger); engine = runtime.deserialize_cuda_engine(plan)
    context = engine.create_execution_context()
    context.set_input_shape(name, shape); context.set_tensor_address(name, tensor.data_ptr())
    context.get_tensor_shape(output)  # after all input shapes are set
    context.execute_async_v3(stream.cuda_stream); stream.synchronize()

Copies in, the engine and copies out all run on one private CUDA stream. The decoder engine has an
optimisation profile for the number of boxes (1..max, recorded in the manifest); more boxes than the
profile's maximum are run in chunks.

NOT verified on a machine with TensorRT (none was available while this was written).
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import ModuleType

import numpy as np

from mkgan_engine.backends.base import ExportedDetector, ExportedModel, ExportedSamDecoder, ExportedSamEncoder
from mkgan_engine.backends.manifest import Artefact

log = logging.getLogger(__name__)

__all__ = ["TENSORRT_MISSING", "TensorRTDetector", "TensorRTModel", "TensorRTSamDecoder", "TensorRTSamEncoder",
           "TensorRTUnavailable", "make_logger", "require_tensorrt"]

TENSORRT_MISSING = "TensorRT is not installed: pip install mkgan-engine[gpu] on an NVIDIA machine"

_TORCH_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT32": "int32", "INT64": "int64",
                 "INT8": "int8", "UINT8": "uint8", "BOOL": "bool"}


class TensorRTUnavailable(ImportError):
    """TensorRT (or a CUDA device for it) is not available here."""


def require_tensorrt() -> ModuleType:
    """``import tensorrt`` or raise :class:`TensorRTUnavailable` with the install hint."""
    try:
        import tensorrt as trt  # optional dependency, imported on use only
    except ImportError as e:
        raise TensorRTUnavailable(TENSORRT_MISSING) from e
    return trt


def make_logger(trt: ModuleType, verbose: bool = False):
    """A ``trt.ILogger`` forwarding to Python logging; ``.errors`` collects error messages."""

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg) -> None:  # TensorRT callback
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                self.errors.append(str(msg))
                log.error("TensorRT: %s", msg)
            elif severity == trt.ILogger.Severity.WARNING:
                log.warning("TensorRT: %s", msg)
            elif verbose:
                log.info("TensorRT: %s", msg)

    return Logger()


class TensorRTModel(ExportedModel):
    """One deserialized engine on any exported model: ``run(*arrays) -> list of float32 outputs``
    (inputs in the manifest's order). The model-specific classes below add the protocol calls; the
    exporter runs this directly for its parity checks."""

    name = "tensorrt"
    file_format = "engine"
    default_device = "cuda"

    def __init__(self, path: Path | str, device: str | None = "cuda", artefact: Artefact | None = None) -> None:
        trt = require_tensorrt()
        import torch

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: TensorRT engine not found")
        dev = torch.device("cuda" if device in (None, "auto") else device)
        if dev.type != "cuda" or not torch.cuda.is_available():
            raise RuntimeError(f"backend tensorrt needs a CUDA device (got device {device!r}"
                               + ("" if torch.cuda.is_available() else "; no CUDA device is available") + ")")
        self.device = dev if dev.index is not None else torch.device("cuda", torch.cuda.current_device())
        self.artefact = artefact
        self._torch = torch
        self._trt = trt
        self.logger = make_logger(trt)
        with torch.cuda.device(self.device):
            self.runtime = trt.Runtime(self.logger)
            self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
            if self.engine is None:
                built = (artefact.tool_versions.get("tensorrt") if artefact else None) or "another version"
                raise RuntimeError(f"TensorRT {trt.__version__} could not load {self.path.name} (built with TensorRT {built}"
                                   f"{' on another GPU' if built == trt.__version__ else ''}): engines only run with the "
                                   "TensorRT version and GPU kind that built them; re-export on this machine with "
                                   "mkgan-engine export --format engine")
            self.context = self.engine.create_execution_context()
            self.stream = torch.cuda.Stream(self.device)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) != trt.TensorIOMode.INPUT]
        if artefact is not None:  # positional order of the exported module's forward (the manifest's)
            order = {t.name: i for i, t in enumerate([*artefact.inputs, *artefact.outputs])}
            self.input_names.sort(key=lambda n: order.get(n, len(order)))
            self.output_names.sort(key=lambda n: order.get(n, len(order)))
        self.dtypes = {n: self._torch_dtype(self.engine.get_tensor_dtype(n)) for n in names}
        log.info("%s: TensorRT %s on %s, inputs %s, outputs %s", self.path.name, trt.__version__,
                 torch.cuda.get_device_name(self.device), self.input_names, self.output_names)

    def _torch_dtype(self, dt):
        key = str(dt).rsplit(".", 1)[-1].upper()
        return getattr(self._torch, _TORCH_DTYPES.get(key, "float32"))

    def profile_max(self, name: str, axis: int = 0) -> int | None:
        """The largest size of ``name``'s ``axis`` that the engine's optimisation profile 0 accepts."""
        if self.artefact is not None:
            prof = self.artefact.extra.get("profile", {}).get(name)
            if prof:
                return int(prof[2][axis])
        try:
            return int(self.engine.get_tensor_profile_shape(name, 0)[2][axis])
        except Exception:  # noqa: BLE001 - static inputs have no profile
            return None

    def run(self, *arrays: np.ndarray) -> list[np.ndarray]:
        torch = self._torch
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            keep = []
            for name, a in zip(self.input_names, arrays):
                t = torch.from_numpy(np.ascontiguousarray(a)).to(self.device, self.dtypes[name]).contiguous()
                if not self.context.set_input_shape(name, tuple(t.shape)):
                    raise ValueError(f"{self.path.name}: input {name} shape {tuple(t.shape)} is outside the engine's "
                                     "optimisation profile")
                self.context.set_tensor_address(name, t.data_ptr())
                keep.append(t)
            outs = []
            for name in self.output_names:
                shape = tuple(self.context.get_tensor_shape(name))
                o = torch.empty(shape, dtype=self.dtypes[name], device=self.device)
                self.context.set_tensor_address(name, o.data_ptr())
                outs.append(o)
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError(f"{self.path.name}: TensorRT execution failed: " + "; ".join(self.logger.errors[-3:]))
            result = [o.float().cpu() for o in outs]  # on self.stream: ordered after the engine
        self.stream.synchronize()
        return [r.numpy() for r in result]


class TensorRTDetector(ExportedDetector, TensorRTModel):
    """:class:`~mkgan_engine.backends.base.DetectorBackend` on ``yolo.engine``."""

    model = "yolo"

    def __init__(self, path: Path | str, device: str | None = "cuda", artefact: Artefact | None = None) -> None:
        super().__init__(path, device, artefact)
        shape = tuple(self.engine.get_tensor_shape(self.input_names[0]))
        self.input_size = int(shape[-1]) if shape[-1] > 0 else int((artefact.extra if artefact else {}).get("imgsz", 640))


class TensorRTSamEncoder(ExportedSamEncoder, TensorRTModel):
    """:class:`~mkgan_engine.backends.base.SamEncoderBackend` on ``sam_encoder.engine``."""

    model = "sam_encoder"


class TensorRTSamDecoder(ExportedSamDecoder, TensorRTModel):
    """:class:`~mkgan_engine.backends.base.SamDecoderBackend` on ``sam_decoder.engine``; N > profile max is chunked."""

    model = "sam_decoder"

    def max_boxes(self) -> int | None:
        return self.profile_max(self.input_names[1])
