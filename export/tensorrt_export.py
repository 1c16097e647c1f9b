"""ONNX -> TensorRT engine (serialized plan) with the TensorRT Python API.

``import tensorrt`` happens only inside these functions (through
:func:`mkgan_engine.backends.tensorrt_backend.require_tensorrt`, shared with the runtime backend):
the rest of mkgan-engine never needs it.
Written against the documented API of TensorRT 10.x and 11.x (and 8.6, which still needs the
EXPLICIT_BATCH network flag):

    builder = trt.Builder(logger); network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger); parser.parse_from_file(onnx)   # finds external data
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, bytes)
    profile = builder.create_optimization_profile(); profile.set_shape(name, min, opt, max)
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)                  # None on failure

fp16 (``half=True``):
- TensorRT 10.x (weakly typed networks; deprecated from 10.12 but still there): BuilderFlag.FP16 +
  BuilderFlag.OBEY_PRECISION_CONSTRAINTS, and every normalization layer (each SAM LayerNorm is one
  ONNX LayerNormalization -> one INormalizationLayer, see :mod:`mkgan_engine.export.modules`) gets
  ``layer.precision = trt.float32`` and fp32 output types. LayerNorm after attention overflows in fp16.
- TensorRT >= 11 removed FP16 / OBEY_PRECISION_CONSTRAINTS (all networks are strongly typed): the
  caller passes an ONNX whose *graph* is already mixed precision (fp16 weights/activations, LayerNorm
  in fp32 through explicit Casts, fp32 I/O: :class:`mkgan_engine.export.modules.MixedPrecision`)
  and the network is built as is (STRONGLY_TYPED flag where it exists).

NOT verified on a machine with TensorRT (none was available while this was written): the code
follows the documentation; the tests only check the "not installed" error path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from mkgan_engine.backends.tensorrt_backend import make_logger, require_tensorrt

log = logging.getLogger(__name__)


def trt_major(trt: ModuleType) -> int:
    try:
        return int(str(trt.__version__).split(".")[0])
    except ValueError:  # pragma: no cover
        return 10


def weak_typing_available(trt: ModuleType) -> bool:
    """True where BuilderFlag.FP16 exists (TensorRT <= 10.x); TensorRT 11 is strongly typed only."""
    return hasattr(trt.BuilderFlag, "FP16")


@dataclass
class BuildResult:
    precision: str
    detail: str
    fp32_layers: int = 0
    profile: dict[str, list[list[int]]] = field(default_factory=dict)


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    *,
    half: bool = False,
    strongly_typed_fp16: bool = False,
    workspace_gb: float = 4.0,
    profiles: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] | None = None,
    verbose: bool = False,
) -> BuildResult:
    """Build ``engine_path`` from ``onnx_path``.

    half: fp16 engine. strongly_typed_fp16: the ONNX graph already carries its precisions (mixed
    fp16/fp32); build a strongly typed network from it (required for fp16 on TensorRT >= 11).
    profiles: {input name: (min, opt, max) shapes} for dynamic inputs (e.g. the decoder's boxes).
    """
    trt = require_tensorrt()
    logger = make_logger(trt, verbose)
    builder = trt.Builder(logger)
    flags = 0
    creation = trt.NetworkDefinitionCreationFlag
    if trt_major(trt) < 10 and hasattr(creation, "EXPLICIT_BATCH"):
        flags |= 1 << int(creation.EXPLICIT_BATCH)  # implicit batch is gone from 10.0 (flag deprecated/ignored)
    if strongly_typed_fp16 and hasattr(creation, "STRONGLY_TYPED"):
        flags |= 1 << int(creation.STRONGLY_TYPED)  # accepted and ignored on 11.x (always strongly typed)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"TensorRT could not parse {onnx_path.name}: " + "; ".join(errors or logger.errors or ["unknown error"]))

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))

    profile_info: dict[str, list[list[int]]] = {}
    if profiles:
        profile = builder.create_optimization_profile()
        for name, (mn, opt, mx) in profiles.items():
            profile.set_shape(name, tuple(mn), tuple(opt), tuple(mx))
            profile_info[name] = [list(mn), list(opt), list(mx)]
        config.add_optimization_profile(profile)

    result = BuildResult("fp32", "fp32 (TF32 where the GPU has it)", profile=profile_info)
    if half and strongly_typed_fp16:
        result = BuildResult("fp16", "fp16 strongly typed from a mixed-precision ONNX; LayerNorm in fp32", profile=profile_info)
    elif half:
        if not weak_typing_available(trt):
            raise RuntimeError(f"TensorRT {trt.__version__} has no FP16 builder flag (strongly typed only): "
                               "build from a mixed-precision ONNX (strongly_typed_fp16=True)")
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        pinned = 0
        float_types = (trt.float32, trt.float16)
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            if layer.type != trt.LayerType.NORMALIZATION:
                continue
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                if layer.get_output(j).dtype in float_types:
                    layer.set_output_type(j, trt.float32)
            pinned += 1
        result = BuildResult("fp16", f"fp16 (BuilderFlag.FP16); {pinned} normalization layer(s) kept fp32 "
                             "(OBEY_PRECISION_CONSTRAINTS)", fp32_layers=pinned, profile=profile_info)

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path.name}: "
                           + ("; ".join(logger.errors[-3:]) or "see the TensorRT log")
                           + f" (workspace {workspace_gb} GB; raise workspace_gb)")
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    with open(engine_path, "wb") as f:
        f.write(plan)  # IHostMemory exposes the buffer protocol
    return result
