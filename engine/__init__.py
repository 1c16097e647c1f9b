"""mkgan_engine: blind super-resolution for photos whose blur varies.

An image is split into regions (a masker), one SR kernel is estimated per region (KENet, the
learned estimator shipped with the package, or KernelGAN), each region is super-resolved with its
kernel (ZSSR) and the regions are merged seamlessly.

Heavy modules (torch, ultralytics, segment_anything, onnxruntime, tensorrt) are imported lazily,
so ``import mkgan_engine`` stays fast. The public names below resolve on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

_LAZY: dict[str, str] = {
    "Engine": "mkgan_engine.pipeline",
    "Result": "mkgan_engine.pipeline",
    "EngineConfig": "mkgan_engine.config",
    "MaskerConfig": "mkgan_engine.config",
    "OutputConfig": "mkgan_engine.config",
    "RegionMap": "mkgan_engine.regions",
    "RegionInfo": "mkgan_engine.regions",
    "read_image": "mkgan_engine.imageio",
    "write_image": "mkgan_engine.imageio",
}

__all__ = ["__version__", *_LAZY]

if TYPE_CHECKING:  # pragma: no cover
    from mkgan_engine.config import EngineConfig, MaskerConfig, OutputConfig
    from mkgan_engine.imageio import read_image, write_image
    from mkgan_engine.pipeline import Engine, Result
    from mkgan_engine.regions import RegionInfo, RegionMap


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mkgan_engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
