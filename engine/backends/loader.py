"""``load_backends(config)``: the (detector, SAM encoder, SAM decoder) backends that ``config.backend``
names - the one place that builds them (the yolo-sam / sam maskers call it for the ones not injected).

- ``torch``: the user's ``--yolo-weights`` .pt and ``--sam-checkpoint`` .pth, run eagerly
  (:mod:`mkgan_engine.backends.torch_backend`; needs ultralytics / segment_anything).
- ``onnxruntime`` / ``tensorrt`` / ``aoti``: the files written by ``mkgan-engine export --format
  onnx|engine|aoti`` into ``config.engines_dir``, found through its ``manifest.json``. These never
  import ultralytics or segment_anything. When the user also passes the original weights
  (``yolo_weights`` / ``sam_checkpoint``), their sha256 must match the manifest's (else
  :class:`~mkgan_engine.backends.manifest.ManifestMismatch`); TensorRT engines and AOTI packages are
  refused when built with another TensorRT / torch major version.

The detector is None when it is not wanted (``detector=False``; by default when the masker does not
need one, ``config.resolved_name() == "sam"``).
Errors: ValueError (no engines dir, unknown backend), FileNotFoundError (dir/manifest missing),
ManifestError (artefact missing from the manifest, invalid manifest), ManifestMismatch (weights or
tool versions differ), ImportError (runtime not installed), RuntimeError (no CUDA for TensorRT).
"""

from __future__ import annotations

import logging
from pathlib import Path

from mkgan_engine.backends.base import DetectorBackend, SamDecoderBackend, SamEncoderBackend
from mkgan_engine.config import BACKEND_NAMES, MaskerConfig
from mkgan_engine.backends.manifest import BACKEND_FORMAT, locate_artefact

log = logging.getLogger(__name__)

__all__ = ["load_backends"]


def _classes(backend: str) -> tuple[type, type, type]:
    """(detector, encoder, decoder) classes of an exported-file backend (imported on use)."""
    if backend == "onnxruntime":
        from mkgan_engine.backends.onnxruntime_backend import (
            OnnxRuntimeDetector,
            OnnxRuntimeSamDecoder,
            OnnxRuntimeSamEncoder,
        )

        return OnnxRuntimeDetector, OnnxRuntimeSamEncoder, OnnxRuntimeSamDecoder
    if backend == "tensorrt":
        from mkgan_engine.backends.tensorrt_backend import TensorRTDetector, TensorRTSamDecoder, TensorRTSamEncoder

        return TensorRTDetector, TensorRTSamEncoder, TensorRTSamDecoder
    from mkgan_engine.backends.aoti_backend import AotiDetector, AotiSamDecoder, AotiSamEncoder

    return AotiDetector, AotiSamEncoder, AotiSamDecoder


def load_backends(config: MaskerConfig, *, detector: bool | None = None,
                  ) -> tuple[DetectorBackend | None, SamEncoderBackend, SamDecoderBackend]:
    """(detector or None, encoder, decoder) for ``config.backend``; see the module docstring.

    detector: build the detector (None = unless ``config.resolved_name() == "sam"``); False skips
    loading YOLO at all (e.g. when the caller injects its own detector).
    """
    backend = config.backend
    need_detector = config.resolved_name() != "sam" if detector is None else detector
    if backend == "torch":
        from mkgan_engine.backends.torch_backend import load_torch_backends

        return load_torch_backends(config.yolo_weights, config.sam_checkpoint, config.sam_type, config.device,
                                   detector=need_detector)
    if backend not in BACKEND_FORMAT:
        raise ValueError(f"backend {backend!r}: unknown backend; choose from {', '.join(BACKEND_NAMES)}")
    fmt = BACKEND_FORMAT[backend]
    if config.engines_dir is None:
        raise ValueError(f"backend {backend} runs exported files: pass engines_dir, a directory written by "
                         f"`mkgan-engine export --format {fmt} -o DIR` (or the torch backend with the weights)")
    root = Path(config.engines_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"engines_dir {root}: directory not found (write it with `mkgan-engine export --format {fmt} -o {root}`)")
    det_cls, enc_cls, dec_cls = _classes(backend)

    def build(cls, model: str, weights: Path | None):
        path, artefact = locate_artefact(root, model, fmt, weights)
        if model != "yolo" and artefact.extra.get("sam_type") not in (None, config.sam_type):
            log.info("%s: exported from SAM %s (config says %s; the exported files decide)", artefact.file,
                     artefact.extra.get("sam_type"), config.sam_type)
        return cls(path, device=config.device, artefact=artefact)

    detector = build(det_cls, "yolo", config.yolo_weights) if need_detector else None
    encoder = build(enc_cls, "sam_encoder", config.sam_checkpoint)
    decoder = build(dec_cls, "sam_decoder", config.sam_checkpoint)
    return detector, encoder, decoder
