"""Export-time plumbing around :mod:`mkgan_engine.backends.torch_modules`: the I/O contract of each
model (names, example inputs, dynamic dimensions), LayerNorm handling, and the fp16 wrapper.

- :data:`SPECS` names every input/output (the names the runtime backends read from the manifest).
- :func:`layernorms_as_onnx_op` temporarily swaps segment_anything's ``LayerNorm2d`` (written as
  mean/pow/sqrt, which exports as ~8 ONNX nodes) for an exactly equivalent ``F.layer_norm`` over the
  channel axis, so every SAM norm becomes one ONNX ``LayerNormalization`` node: ONNX Runtime runs it
  fused, and TensorRT parses it into one ``INormalizationLayer``, which the fp16 engine build pins to
  fp32 (LayerNorm after attention overflows in fp16).
- :class:`MixedPrecision` is the fp16 form of a module for strongly typed builds (TensorRT >= 11,
  which has no FP16 builder flag) and fp16 AOTInductor packages on CUDA: weights and activations in
  fp16, every LayerNorm computed in fp32, inputs and outputs fp32 (SAM box coordinates stay fp32
  until they are normalised to [0, 1], as in the torch backend).
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from mkgan_engine.backends.base import SAM_EMBED_SIZE, SAM_IMAGE_SIZE

__all__ = ["BATCH_DIM", "SPECS", "IOSpec", "MixedPrecision", "example_inputs", "io_spec", "layernorms_as_onnx_op",
           "torch_dynamic_shapes"]


@dataclass(frozen=True)
class IOSpec:
    """Tensor names and dynamic dimensions of one exported model."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    dynamic: dict[str, dict[int, str]]  # input name -> {axis: dim name}; outputs follow by propagation


SPECS: dict[str, IOSpec] = {
    "yolo": IOSpec(("images",), ("output0",), {}),
    "sam_encoder": IOSpec(("image",), ("embeddings",), {}),
    "sam_decoder": IOSpec(("embeddings", "boxes"), ("masks", "iou"), {"boxes": {0: "num_boxes"}}),
}
BATCH_DIM = "batch"
"""Name of the (optional, ``dynamic_batch=True``) leading dimension of the detector and encoder."""


def io_spec(model: str, dynamic_batch: bool) -> IOSpec:
    """:data:`SPECS` of ``model``, with a dynamic leading ``batch`` dim for the detector/encoder if asked."""
    spec = SPECS[model]
    if dynamic_batch and model in ("yolo", "sam_encoder"):
        return IOSpec(spec.inputs, spec.outputs, {spec.inputs[0]: {0: BATCH_DIM}})
    return spec


def example_inputs(model: str, imgsz: int = 640, *, batch: int = 1, num_boxes: int = 2, seed: int = 0,
                   device: str | torch.device = "cpu") -> tuple[torch.Tensor, ...]:
    """Fixed, seeded example inputs (also the parity inputs).

    Dynamic dimensions must not be traced at size 1 (torch.export specialises 0/1 sizes), so export
    uses ``num_boxes=2`` / ``batch=2`` when those dims are dynamic.
    """
    g = torch.Generator().manual_seed(seed)
    if model == "yolo":
        out: tuple[torch.Tensor, ...] = (torch.rand(batch, 3, imgsz, imgsz, generator=g),)
    elif model == "sam_encoder":
        out = (torch.randn(batch, 3, SAM_IMAGE_SIZE, SAM_IMAGE_SIZE, generator=g),)
    elif model == "sam_decoder":
        emb = torch.randn(1, 256, SAM_EMBED_SIZE, SAM_EMBED_SIZE, generator=g)
        base = torch.tensor([[120.0, 160.0, 610.0, 700.0], [20.0, 30.0, 1000.0, 900.0], [400.0, 380.0, 530.0, 560.0],
                             [0.0, 0.0, 1023.0, 1023.0]])
        reps = -(-num_boxes // len(base))
        boxes = base.repeat(reps, 1)[:num_boxes] + torch.rand(num_boxes, 4, generator=g) * 8
        out = (emb, boxes)
    else:
        raise ValueError(f"unknown model {model!r}")
    return tuple(t.to(device) for t in out)


def torch_dynamic_shapes(model: str, spec: IOSpec, max_boxes: int, max_batch: int) -> tuple | None:
    """``dynamic_shapes`` for torch.export / torch.onnx.export, positional (one entry per forward
    argument, so it also fits :class:`MixedPrecision`'s ``forward(*args)``)."""
    if not spec.dynamic:
        return None
    out: list[dict[int, torch.export.Dim] | None] = []
    for io_name in spec.inputs:
        dims = spec.dynamic.get(io_name)
        out.append({axis: torch.export.Dim(name, min=1, max=max_boxes if name == "num_boxes" else max_batch)
                    for axis, name in dims.items()} if dims else None)
    return tuple(out)


# ------------------------------------------------------------------------------------ norms
def _is_layernorm2d(m: nn.Module) -> bool:
    return type(m).__name__ == "LayerNorm2d" and hasattr(m, "weight") and hasattr(m, "eps")


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of NCHW (== segment_anything's LayerNorm2d) or the last axis
    (== nn.LayerNorm), written as one ``F.layer_norm`` (one ONNX LayerNormalization node).

    ``fp32=True`` computes in fp32 whatever the input dtype, and casts back (for fp16 models).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, eps: float, channels_first: bool,
                 fp32: bool = False) -> None:
        super().__init__()
        self.channels_first = channels_first
        self.eps = float(eps)
        self.fp32 = fp32
        dtype = torch.float32 if fp32 else weight.dtype
        self.register_buffer("weight", weight.detach().to(dtype).clone())
        self.register_buffer("bias", None if bias is None else bias.detach().to(dtype).clone())

    def _apply(self, fn, recurse=True):  # keep fp32 buffers when the parent is .half()-ed
        if not self.fp32:
            return super()._apply(fn, recurse)
        w, b = self.weight, self.bias
        super()._apply(fn, recurse)
        self.weight = self.weight.to(torch.float32) if self.weight.is_floating_point() else w
        if b is not None:
            self.bias = self.bias.to(torch.float32)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        y = x.float() if self.fp32 else x
        if self.channels_first:
            y = y.permute(0, 2, 3, 1)
        y = F.layer_norm(y, (y.shape[-1],), self.weight, self.bias, self.eps)
        if self.channels_first:
            y = y.permute(0, 3, 1, 2)
        return y.to(dtype) if self.fp32 else y


def _swap_norms(module: nn.Module, fp32: bool, include_layernorm: bool) -> list[tuple[nn.Module, str, nn.Module]]:
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if _is_layernorm2d(child):
                new = ChannelLayerNorm(child.weight, child.bias, child.eps, channels_first=True, fp32=fp32)
            elif include_layernorm and isinstance(child, nn.LayerNorm) and child.elementwise_affine \
                    and len(child.normalized_shape) == 1:
                new = ChannelLayerNorm(child.weight, child.bias, child.eps, channels_first=False, fp32=fp32)
            else:
                continue
            setattr(parent, name, new.to(child.weight.device))
            swapped.append((parent, name, child))
    return swapped


@contextlib.contextmanager
def layernorms_as_onnx_op(module: nn.Module) -> Iterator[int]:
    """Within the block, ``LayerNorm2d`` modules are replaced by the equivalent :class:`ChannelLayerNorm`
    (restored afterwards). Yields how many were swapped."""
    swapped = _swap_norms(module, fp32=False, include_layernorm=False)
    try:
        yield len(swapped)
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)


class MixedPrecision(nn.Module):
    """fp16 copy of ``module`` with every LayerNorm in fp32; fp32 inputs/outputs.

    ``half_inputs[i]`` says whether input i is cast to fp16 on entry (False keeps it fp32, e.g. SAM
    box coordinates). The original module is not modified (deep copy).
    """

    def __init__(self, module: nn.Module, half_inputs: tuple[bool, ...]) -> None:
        super().__init__()
        inner = copy.deepcopy(module).eval()
        _swap_norms(inner, fp32=True, include_layernorm=True)
        self.inner = inner.half()
        self.half_inputs = half_inputs

    def forward(self, *args: torch.Tensor):
        args = tuple(a.half() if h else a for a, h in zip(args, self.half_inputs))
        out = self.inner(*args)
        if isinstance(out, (tuple, list)):
            return tuple(o.float() for o in out)
        return out.float()
