"""The engine: image -> regions -> one kernel per region -> ZSSR per region -> merged SR image.

Each stage is a method that takes plain arrays, so a library user can call any stage alone (bring
their own mask or kernels)::

    from mkgan_engine import Engine, EngineConfig
    engine = Engine(EngineConfig(scale=2, preset="fast"))
    result = engine.run("photo.png")          # or a float32 HxWx3 array in [0, 1]
    result.sr                                 # float32 (2H)x(2W)x3 in [0, 1]
    [r.kernel for r in result.regions]        # one 13x13 x2 kernel per region
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mkgan_engine.config import EngineConfig
from mkgan_engine.imageio import LoadedImage, read_image
from mkgan_engine.regions import RegionMap

log = logging.getLogger(__name__)

Status = Literal["ok", "failed", "skipped"]


class InputError(ValueError):
    """The input cannot be processed (too small, unreadable, bad mask); the message says why."""


@dataclass
class RegionResult:
    """One region's outcome. kernel: float32 13x13 x2 kernel (sum 1); kernel_x4: its analytic x4
    kernel when scale is 4; estimator: what produced the kernel ("kenet", "kernelgan", "hybrid",
    "user"); status: "ok", or KernelGAN's "collapsed"/"failed" (a fallback kernel); confidence: for
    KENet, the number of windows and the spread (std over windows, px) of their sigmas; restarts:
    KernelGAN stability-guard restarts for this region."""

    label: int
    name: str
    source: str
    area_fraction: float
    kernel: np.ndarray
    kernel_x4: np.ndarray | None = None
    estimator: str = "user"
    status: str = "ok"
    confidence: dict[str, Any] | None = None
    restarts: int = 0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        from mkgan_engine.train.kernel import kernel_moments

        major, minor, theta = kernel_moments(self.kernel)
        return {
            "label": self.label,
            "name": self.name,
            "source": self.source,
            "area_fraction": round(self.area_fraction, 4),
            "kernel": {"sigma_major_px": round(major, 3), "sigma_minor_px": round(minor, 3),
                       "theta_deg": round(float(np.degrees(theta)), 1), "size": list(self.kernel.shape)},
            "estimator": self.estimator,
            "status": self.status,
            "confidence": self.confidence,
            "restarts": self.restarts,
            "notes": self.notes,
        }


@dataclass
class Result:
    """The outcome for one image.

    sr: float32 (H*s)x(W*s)x3 RGB in [0, 1] (None unless status is "ok"); alpha: float32 HR alpha
    or None; image: the decoded input (kept to write the output in the input's kind); timings:
    seconds per stage; metrics: PSNR/SSIM/MSE against ground truth when given.
    """

    input: str | None
    status: Status = "ok"
    error: str | None = None
    sr: np.ndarray | None = None
    alpha: np.ndarray | None = None
    image: LoadedImage | None = None
    region_map: RegionMap | None = None
    regions: list[RegionResult] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] | None = None
    metrics_error: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    size_lr: tuple[int, int] | None = None  # (height, width) of the input, kept after release()

    def report_entry(self) -> dict[str, Any]:
        """The JSON-ready record of this image (see README, "Report")."""
        rmap = self.region_map
        return {
            "input": self.input,
            "status": self.status,
            "error": self.error,
            "outputs": self.outputs,
            "size_lr": list(self.size_lr) if self.size_lr is not None else None,
            "regions": [r.summary() for r in self.regions],
            "fallback_reason": rmap.fallback_reason if rmap is not None else None,
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
            "metrics": self.metrics,
            "metrics_error": self.metrics_error,
        }

    def release(self) -> None:
        """Drop the pixel arrays (after writing) so long batches keep memory flat."""
        self.sr = self.alpha = self.image = None


class Engine:
    """Multi-KernelGAN super-resolution with a typed config; see the module docstring.

    on_stage: optional callback(stage_name) for progress displays ("mask", "kernels", "zssr", ...);
    on_progress: optional callback(stage_name, done, total) inside a stage (ZSSR iterations).
    """

    def __init__(
        self,
        config: EngineConfig | None = None,
        on_stage: Callable[[str], None] | None = None,
        on_progress: Callable[[str, int, int], None] | None = None,
    ):
        from mkgan_engine.device import resolve_device

        self.config = config or EngineConfig()
        self.device = resolve_device(self.config.device)
        self.config.masker.device = str(self.device)
        self.on_stage = on_stage
        self.on_progress = on_progress
        self._masker = None
        self._kenet = None
        self.last_mask_timings: dict[str, float] = {}  # per-model seconds of the last masker call

    # ----------------------------------------------------------------------------- stages
    @property
    def masker(self):
        """The configured masker, built on first use (loads weights once)."""
        if self._masker is None:
            from mkgan_engine.maskers import build_masker

            self._masker = build_masker(self.config.masker)
        return self._masker

    def check_size(self, image: np.ndarray) -> None:
        """Raise InputError when the LR image cannot hold one crop of the kernel estimator (64 px)."""
        minimum = self.config.kernelgan.crop_size
        h, w = image.shape[:2]
        if min(h, w) < minimum:
            raise InputError(f"image is {w}x{h} px; kernel estimation needs at least {minimum}x{minimum} px")

    def mask(self, image: np.ndarray, stem: str | None = None) -> RegionMap:
        """Regions of an LR image (float32 HxWx3 in [0,1]): the user's mask from mask_dir when one
        exists for ``stem``, else the configured masker."""
        self.last_mask_timings = {}
        mask_dir = self.config.masker.mask_dir
        if mask_dir is not None and stem is not None:
            from mkgan_engine.maskers.user_mask import load_user_mask

            user = load_user_mask(Path(mask_dir), stem, image.shape[:2], self.config.masker)
            if user is not None:
                return user
            log.warning("no user mask for %s in %s; using the %s masker", stem, mask_dir, self.config.masker.resolved_name())
        region_map = self.masker(image)
        self.last_mask_timings = dict(getattr(self.masker, "last_timings", None) or {})
        return region_map

    def estimate_kernels(self, image: np.ndarray, region_map: RegionMap) -> list[RegionResult]:
        """One x2 kernel per region (image: float32 HxWx3 in [0,1]) with the configured estimator:
        KENet on windows inside each region, KernelGAN with all regions trained together as batched
        members, or KernelGAN started from the KENet kernels ("hybrid")."""
        from mkgan_engine.train.kernel import analytic_x4

        estimator = self.config.kernel_estimator
        masks = [None] if len(region_map) == 1 else [region_map.mask(r.label) for r in region_map.regions]
        kernels, extras = [], []
        if estimator in ("kenet", "hybrid"):
            from mkgan_engine.train.kenet import estimate_region_kernels

            for est in estimate_region_kernels(image, masks, self.config.kenet, self.kenet_model, self.device):
                kernels.append(est.kernel)
                extras.append({"status": "ok", "restarts": 0, "notes": list(est.notes),
                               "confidence": {"windows": est.windows, "spread_px": [round(v, 3) for v in est.spread_px]}})
        if estimator in ("kernelgan", "hybrid"):
            from mkgan_engine.train.kernelgan import estimate_kernels

            config = self.config.kernelgan
            if estimator == "hybrid":
                config = config.with_(kernel_model="gaussian")
            seeds = [self.config.seed * 1000 + i for i in range(len(masks))]
            estimates = estimate_kernels([image] * len(masks), masks, config, seeds, device=self.device,
                                         start_kernels=kernels if estimator == "hybrid" else None)
            kenet_extras = extras or [{}] * len(estimates)
            kernels = [est.kernel for est in estimates]
            extras = [{"status": est.status, "restarts": est.restarts, "confidence": k.get("confidence"),
                       "notes": k.get("notes", []) + list(est.messages)} for est, k in zip(estimates, kenet_extras)]
        return [
            RegionResult(label=region.label, name=region.name, source=region.source, area_fraction=region.area_fraction,
                         kernel=kernel, kernel_x4=analytic_x4(kernel) if self.config.scale == 4 else None,
                         estimator=estimator, **extra)
            for region, kernel, extra in zip(region_map.regions, kernels, extras)
        ]

    @property
    def kenet_model(self):
        """The KENet estimator, loaded (with its sha256 check) on first use."""
        if self._kenet is None:
            from mkgan_engine.train.kenet import load_kenet

            self._kenet = load_kenet(self.config.kenet.weights, self.device)
        return self._kenet

    def super_resolve(self, image: np.ndarray, region_map: RegionMap, kernels: list[np.ndarray]) -> np.ndarray:
        """ZSSR per region with that region's x2 kernel, merged with feathered masks at HR.

        image: float32 HxWx3 in [0,1]; kernels: one x2 kernel per region (in region_map order);
        returns float32 (H*s)x(W*s)x3 in [0,1].
        """
        from mkgan_engine.train.merge import merge_regions
        from mkgan_engine.train.zssr import super_resolve

        scale = self.config.scale
        masks = [None] if len(region_map) == 1 else [region_map.mask(r.label) for r in region_map.regions]
        seeds = [self.config.seed * 1000 + 500 + i for i in range(len(kernels))]
        with self._stage("zssr"):
            progress = None if self.on_progress is None else (lambda done, total: self.on_progress("zssr", done, total))
            outputs = super_resolve(image, kernels, scale, self.config.zssr, masks=masks, seeds=seeds, device=self.device,
                                    progress=progress)
        if len(outputs) == 1:
            return outputs[0]
        with self._stage("merge"):
            return merge_regions(outputs, region_map.upscale(scale), region_map.label_ids, scale=scale)

    # ----------------------------------------------------------------------------- whole image
    def run(
        self,
        image: str | os.PathLike[str] | np.ndarray | LoadedImage,
        ground_truth: np.ndarray | str | os.PathLike[str] | None = None,
        region_map: RegionMap | None = None,
        kernels: list[np.ndarray] | None = None,
    ) -> Result:
        """Super-resolve one image. Raises on bad input (see :meth:`run_many` for a batch that
        records failures instead). ``region_map``/``kernels`` skip the masking/estimation stages."""
        self._timings: dict[str, float] = {}
        with self._stage("read"):
            loaded = _as_loaded(image)
        result = Result(input=str(loaded.path) if loaded.path else None, image=loaded, timings=self._timings,
                        size_lr=loaded.shape)
        rgb = loaded.rgb
        self.check_size(rgb)
        if region_map is None:
            with self._stage("mask"):
                region_map = self.mask(rgb, loaded.path.stem if loaded.path else None)
            self._timings.update(_model_timings(self.last_mask_timings))
        if region_map.shape != rgb.shape[:2]:
            raise InputError(f"region map is {region_map.shape}, image is {rgb.shape[:2]}")
        result.region_map = region_map
        if kernels is None:
            with self._stage("kernels"):
                result.regions = self.estimate_kernels(rgb, region_map)
        else:
            if len(kernels) != len(region_map):
                raise InputError(f"{len(kernels)} kernels for {len(region_map)} regions")
            result.regions = [RegionResult(r.label, r.name, "user", r.area_fraction, np.asarray(k, np.float32))
                              for r, k in zip(region_map.regions, kernels)]
        result.sr = self.super_resolve(rgb, region_map, [r.kernel for r in result.regions])
        if loaded.alpha is not None:
            result.alpha = _upscale_plane(loaded.alpha, self.config.scale)
        if ground_truth is not None:
            from mkgan_engine.metrics import score

            try:  # score refuses images of different sizes (the SR image's first)
                metrics = score(result.sr, _as_loaded(ground_truth).rgb, self.config.scale)
                result.metrics = {k: round(v, 5) for k, v in metrics.items()}
            except ValueError as error:
                result.metrics_error = f"ground truth not scored: {error}"
                log.warning("%s: %s", result.input, result.metrics_error)
        return result

    def run_many(self, paths: Iterable[str | os.PathLike[str]], **kwargs: Any) -> Iterator[Result]:
        """Stream results for many files as they finish; failures are yielded, never raised.
        See :func:`mkgan_engine.batch.run_batch` for the keyword arguments."""
        from mkgan_engine.batch import run_batch

        yield from run_batch(self, [Path(p) for p in paths], **kwargs)

    # ----------------------------------------------------------------------------- helpers
    @contextmanager
    def _stage(self, name: str):
        if self.on_stage is not None:
            self.on_stage(name)
        start = time.perf_counter()
        try:
            yield
        finally:
            timings = getattr(self, "_timings", None)
            if timings is not None:
                timings[name] = timings.get(name, 0.0) + time.perf_counter() - start


def _model_timings(timings: dict[str, float]) -> dict[str, float]:
    """Masker per-model seconds (detector, sam_encoder, ...) as ``mask_<model>`` stage timings."""
    return {f"mask_{k}": v for k, v in timings.items() if k != "total"}


def _as_loaded(image: str | os.PathLike[str] | np.ndarray | LoadedImage) -> LoadedImage:
    if isinstance(image, LoadedImage):
        return image
    if isinstance(image, np.ndarray):
        array = np.asarray(image, np.float32)
        if array.ndim == 2:
            return LoadedImage(np.repeat(array[..., None], 3, axis=2), grayscale=True)
        if array.shape[2] == 4:
            return LoadedImage(np.ascontiguousarray(array[..., :3]), alpha=array[..., 3])
        return LoadedImage(np.ascontiguousarray(array[..., :3]))
    return read_image(image)


def _upscale_plane(plane: np.ndarray, scale: int) -> np.ndarray:
    """float32 HxW in [0,1] -> (H*s)x(W*s) bicubic, clipped (alpha is upscaled on its own)."""
    import torch

    from mkgan_engine.train.degradation import resize_bicubic

    up = resize_bicubic(torch.from_numpy(np.ascontiguousarray(plane))[None, None], float(scale))
    return np.clip(up[0, 0].numpy(), 0, 1)
