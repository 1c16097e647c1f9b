"""PyTorch -> ONNX with the dynamo exporter (``torch.onnx.export(..., dynamo=True)``).

- YOLOv8 detector: ``images (1|batch, 3, S, S)`` -> ``output0 (1|batch, 4 + nc, A)``. No NMS in the
  graph: the raw predictions are decoded, thresholded and NMS-ed by the shared post-processing
  (:mod:`mkgan_engine.maskers.detection`) in numpy, identically for every backend. This keeps the
  graph free of NonMaxSuppression / TensorRT NMS plugins and keeps detections bit-comparable
  across backends.
- SAM image encoder: ``image (1, 3, 1024, 1024)`` -> ``embeddings (1, 256, 64, 64)``. The weights
  are stored as ONNX external data (``<file>.data``) only when they exceed protobuf's 2 GB limit
  (vit_h); vit_b/vit_l fit in one file.
- SAM box decoder: ``embeddings (1, 256, 64, 64)``, ``boxes (num_boxes, 4)`` -> ``masks
  (num_boxes, 1, 256, 256)``, ``iou (num_boxes, 1)`` with ``num_boxes`` dynamic.

The ONNX file is the single source of truth for the manifest's I/O specs: they are read back from it.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from mkgan_engine.backends.manifest import TensorSpec
from mkgan_engine.export.modules import IOSpec

log = logging.getLogger(__name__)

DEFAULT_OPSET = 18
"""ONNX opset: >= 17 for LayerNormalization; 18 is the dynamo exporter's native opset, supported by
ONNX Runtime >= 1.14 and TensorRT >= 8.6."""
EXTERNAL_DATA_BYTES = 1_800_000_000
"""Above this many bytes of weights the model is saved with external data (protobuf limit: 2 GB)."""

_ONNX_DTYPES = {1: "float32", 10: "float16", 11: "float64", 6: "int32", 7: "int64", 9: "bool", 16: "bfloat16"}


def parameter_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def export_onnx(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path, spec: IOSpec,
                dynamic_shapes: dict | None, opset: int = DEFAULT_OPSET) -> tuple[list[str], int]:
    """Export ``module(*args)`` to ``path``; returns (data files written next to it, opset used)."""
    module = module.eval()
    external = parameter_bytes(module) > EXTERNAL_DATA_BYTES
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        program = torch.onnx.export(
            module, args, None, dynamo=True, input_names=list(spec.inputs), output_names=list(spec.outputs),
            dynamic_shapes=dynamic_shapes, opset_version=opset, external_data=external, verbose=False,
        )
    if program is None:  # pragma: no cover - torch < 2.5 returns None with f=None
        raise RuntimeError("torch.onnx.export(dynamo=True) returned no program; torch >= 2.5 is required")
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path), external_data=external)
    data_files = [p.name for p in sorted(path.parent.glob(path.name + ".data"))] if external else []
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    used = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), opset)
    return data_files, int(used)


def read_io_specs(path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """(inputs, outputs) of an ONNX file: names, shapes (dynamic dims by name) and dtypes."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    init = {i.name for i in proto.graph.initializer}

    def spec(v) -> TensorSpec:
        tt = v.type.tensor_type
        shape: list[int | str] = [d.dim_param if d.dim_param else int(d.dim_value) for d in tt.shape.dim]
        return TensorSpec(v.name, shape, _ONNX_DTYPES.get(tt.elem_type, str(tt.elem_type)))

    return [spec(v) for v in proto.graph.input if v.name not in init], [spec(v) for v in proto.graph.output]
