"""mkgan_engine.export: YOLOv8 and SAM to ONNX, TensorRT and AOTInductor, with a manifest.

``export_models(ExportOptions(...))`` (in :mod:`mkgan_engine.export.exporter`) does the work;
``mkgan-engine export`` is :mod:`mkgan_engine.export.cli`. The manifest it writes is the runtime's
contract and lives with the runtime, in :mod:`mkgan_engine.backends.manifest`. Names are resolved
lazily so that ``import mkgan_engine.export`` stays cheap (no torch import).
"""

from __future__ import annotations

from typing import Any

__all__ = ["ExportError", "ExportOptions", "export_models"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        import importlib

        return getattr(importlib.import_module("mkgan_engine.export.exporter"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
