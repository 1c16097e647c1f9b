"""The masker interface: LR image -> RegionMap."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from mkgan_engine.regions import RegionMap


@runtime_checkable
class Masker(Protocol):
    """Splits an image into regions.

    ``__call__(image)``: image float32 HxWx3 RGB in [0, 1] at LR size -> post-processed RegionMap
    at the same HxW (label 0 = background), carrying what the masker measured: its seconds per
    model in ``RegionMap.timings`` and diagnostic maps in ``RegionMap.maps`` (both may be
    empty). ``name`` is the masker's CLI name.
    """

    name: str

    def __call__(self, image: np.ndarray) -> RegionMap: ...
