"""Maskers: split an image into regions (see :class:`~mkgan_engine.maskers.base.Masker`).

``build_masker(config)`` returns the masker named by ``config.resolved_name()``; implementations
are imported only when built, so heavy dependencies load only for the masker in use.
"""

from __future__ import annotations

import importlib

from mkgan_engine.config import MaskerConfig
from mkgan_engine.maskers.base import Masker

# name -> "module:factory"; each factory takes a MaskerConfig and returns a Masker.
_REGISTRY: dict[str, str] = {
    "blur": "mkgan_engine.maskers.blur:BlurMasker",
    "fft": "mkgan_engine.maskers.classical:FFTMasker",
    "edges": "mkgan_engine.maskers.classical:EdgeMasker",
    "gradient": "mkgan_engine.maskers.classical:GradientMasker",
    "none": "mkgan_engine.maskers.classical:WholeImageMasker",
    "yolo-sam": "mkgan_engine.maskers.yolo_sam:YoloSamMasker",
    "sam": "mkgan_engine.maskers.yolo_sam:SamMasker",
}


def build_masker(config: MaskerConfig) -> Masker:
    """Instantiate the masker that ``config`` asks for."""
    name = config.resolved_name()
    target = _REGISTRY.get(name)
    if target is None:
        raise ValueError(f"unknown masker {name!r}; choose from {', '.join(sorted(_REGISTRY))}")
    module_name, factory = target.split(":")
    return getattr(importlib.import_module(module_name), factory)(config)


__all__ = ["Masker", "build_masker"]
