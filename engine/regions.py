"""Region maps: which pixel of the low-resolution image belongs to which region.

A :class:`RegionMap` is an integer label map at LR size (label 0 = background) plus metadata per
label. Nothing here assumes two regions: maskers may return any number of labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class RegionInfo:
    """Metadata of one region.

    label: the integer in :attr:`RegionMap.labels`; name: human-readable ("background", "object");
    source: what produced it ("fft", "yolo-sam", "user", ...); score: detector/masker confidence
    in [0, 1] where meaningful; area_fraction: share of the LR image's pixels, in [0, 1].
    """

    label: int
    name: str
    source: str
    area_fraction: float = 0.0
    score: float | None = None


@dataclass
class RegionMap:
    """labels: int32 HxW at LR size, values are region labels (0 = background).

    fallback_reason: set when the masker's regions were merged into one (e.g. a region smaller
    than the minimum area for KernelGAN crops, or nothing detected); the report prints it.
    timings: the masker's seconds per model ("detector", "sam_encoder", ..., "total"), empty when
    it has none. maps: the masker's diagnostic maps at LR size for previews (e.g. "blur_sigma":
    float32 HxW local blur in LR px), empty when it has none.
    """

    labels: np.ndarray
    regions: list[RegionInfo] = field(default_factory=list)
    fallback_reason: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    maps: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.labels = np.ascontiguousarray(self.labels, dtype=np.int32)
        if self.labels.ndim != 2:
            raise ValueError(f"labels must be HxW, got shape {self.labels.shape}")
        if not self.regions:
            self.regions = [
                RegionInfo(label=int(v), name="background" if v == 0 else f"region{v}", source="unknown")
                for v in np.unique(self.labels)
            ]
        self.refresh_areas()

    @classmethod
    def single(cls, shape: tuple[int, ...], source: str = "none", reason: str | None = None) -> "RegionMap":
        """One region covering the whole image (plain KernelGAN); ``shape`` is HxW or an image's HxWxC."""
        return cls(
            np.zeros(tuple(shape[:2]), np.int32),
            [RegionInfo(0, "whole image", source, 1.0)],
            fallback_reason=reason,
        )

    @property
    def shape(self) -> tuple[int, int]:
        return self.labels.shape  # type: ignore[return-value]

    @property
    def label_ids(self) -> list[int]:
        return [r.label for r in self.regions]

    def __len__(self) -> int:
        return len(self.regions)

    def mask(self, label: int) -> np.ndarray:
        """bool HxW mask of one region."""
        return self.labels == label

    def refresh_areas(self) -> None:
        """Recompute every region's area fraction from the label map."""
        total = float(self.labels.size)
        for region in self.regions:
            region.area_fraction = float(np.count_nonzero(self.labels == region.label)) / total

    def upscale(self, scale: int) -> np.ndarray:
        """int32 (H*scale)x(W*scale) label map by nearest-neighbour repetition (grids align exactly)."""
        return np.repeat(np.repeat(self.labels, scale, axis=0), scale, axis=1)
