"""mkgan_engine.export: YOLOv8 and SAM to ONNX, TensorRT and AOTInductor, with a manifest.

``export_models`` (in :mod:`mkgan_engine.export.exporter`) does the work; the manifest schema and
checks are in :mod:`mkgan_engine.export.manifest`; ``mkgan-engine export`` is :mod:`mkgan_engine.export.cli`.
Names are resolved lazily so that ``import mkgan_engine.export`` stays cheap (no torch import).
"""

from __future__ import annotations

from typing import Any

__all__ = ["ExportError", "FORMATS", "Manifest", "describe_engines", "export_models", "read_manifest", "verify_artefact"]

_LAZY = {
    "export_models": "mkgan_engine.export.exporter",
    "ExportError": "mkgan_engine.export.exporter",
    "FORMATS": "mkgan_engine.export.manifest",
    "Manifest": "mkgan_engine.export.manifest",
    "describe_engines": "mkgan_engine.export.manifest",
    "read_manifest": "mkgan_engine.export.manifest",
    "verify_artefact": "mkgan_engine.export.manifest",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
