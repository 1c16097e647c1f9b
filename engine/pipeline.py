"""The engine: image -> regions -> one kernel per region -> ZSSR per region -> merged SR image.

Each stage is a method that takes plain arrays, so a library user can call any stage alone (bring
their own mask or kernels)::

    from mkgan_engine import Engine, EngineConfig
    engine = Engine(EngineConfig(scale=2, preset="fast"))
    result = engine.run("photo.png")          # or a float32 HxWx3 array in [0, 1]
    result.sr                                 # float32 (2H)x(2W)x3 in [0, 1]
    [r.kernel for r in result.regions]        # one 13x13 x2 kernel per region

    region_map = engine.mask(image)           # the stages alone
    plan = engine.plan(image, region_map)
    regions = engine.estimate_kernels(image, plan)
    sr, zssr = engine.super_resolve(image, plan, [r.kernel for r in regions])

:meth:`Engine.run` is :meth:`Engine.prepare` (read, size check, mask) then :meth:`Engine.finish`
(kernels, ZSSR, merge, metrics); the batch runs the two halves in different threads.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
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


@dataclass(frozen=True)
class Plan:
    """What the kernel and ZSSR stages of one image share, derived once from its region map.

    masks: one bool HxW LR mask per region in ``region_map`` order, or ``(None,)`` for a single
    region (the whole image); kernel_seeds: KernelGAN's seed per region (``seed * 1000 + i``);
    zssr_seeds: ZSSR's (``seed * 1000 + 500 + i``); scale: 2 or 4.
    """

    region_map: RegionMap
    masks: tuple[np.ndarray | None, ...]
    kernel_seeds: tuple[int, ...]
    zssr_seeds: tuple[int, ...]
    scale: int

    @classmethod
    def build(cls, region_map: RegionMap, seed: int, scale: int) -> Plan:
        n = len(region_map)
        masks = (None,) if n == 1 else tuple(region_map.mask(r.label) for r in region_map.regions)
        return cls(region_map, masks, tuple(seed * 1000 + i for i in range(n)),
                   tuple(seed * 1000 + 500 + i for i in range(n)), scale)

    def merge(self, srs: list[np.ndarray]) -> np.ndarray:
        """The image from one SR image per region (float32 (H*s)x(W*s)x3 each, plan order): the
        region's own for a single region, else the feathered merge of :mod:`~mkgan_engine.train.merge`."""
        if len(srs) == 1:
            return srs[0]
        from mkgan_engine.train.merge import merge_regions

        return merge_regions(srs, self.region_map.upscale(self.scale), self.region_map.label_ids, scale=self.scale)


@dataclass(frozen=True)
class Prepared:
    """One image read, size-checked and split into regions, ready for :meth:`Engine.finish`.
    timings: seconds of "read", "mask" and the masker's models ("mask_<model>")."""

    image: LoadedImage
    plan: Plan
    timings: dict[str, float]


@dataclass(frozen=True)
class RegionResult:
    """One region's outcome. kernel: float32 13x13 x2 kernel (sum 1); kernel_x4: its analytic x4
    kernel when scale is 4; estimator: what produced the kernel ("kenet", "kernelgan", "hybrid",
    "user"); status: "ok", or KernelGAN's "collapsed"/"failed" (a fallback kernel); confidence: for
    KENet, the number of windows and the spread (std over windows, px) of their sigmas; restarts:
    KernelGAN stability-guard restarts for this region; zssr: this region's ZSSR training
    (:func:`zssr_diagnostics`), None until it ran."""

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
    zssr: dict[str, float] | None = None


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
        """The JSON-ready record of this image (:class:`mkgan_engine.report.Record`)."""
        from mkgan_engine.report import Record

        return Record.of(self).to_json()

    def release(self) -> None:
        """Drop the pixel arrays (after writing) so long batches keep memory flat."""
        self.sr = self.alpha = self.image = None


def zssr_diagnostics(member: Any) -> dict[str, float]:
    """One region's ZSSR (a :class:`mkgan_engine.train.zssr.MemberInfo`): iterations run (all steps),
    of the last step the final learning rate, the mean training L1 and the last reconstruction
    error (L1 on [0, 1] pixels), and the inference tiles run (all steps) with their side (LR px)."""
    last = member.stages[-1]
    return {"iterations": int(member.iterations), "final_lr": float(f"{last.final_lr:.4g}"),
            "loss": float(f"{last.loss:.4g}"), "rec_error": float(f"{last.rec_error:.4g}"),
            "tiles": int(sum(member.tiles)), "tile_px": int(member.tile)}


class Engine:
    """Multi-KernelGAN super-resolution with a typed config; see the module docstring.

    config: as asked for; ``engine.config`` is its :meth:`~mkgan_engine.config.EngineConfig.resolved`
    copy (raises :class:`~mkgan_engine.device.DeviceError` for an unusable device). on_stage:
    optional callback(stage_name) for progress displays ("read", "mask", "kernels", "zssr",
    "merge"); on_progress: optional callback(step, done, total) inside a stage: "zssr train" (training
    iterations of the current step) and "zssr tiles" (inference tiles of all regions).
    """

    def __init__(
        self,
        config: EngineConfig | None = None,
        on_stage: Callable[[str], None] | None = None,
        on_progress: Callable[[str, int, int], None] | None = None,
    ):
        import torch

        self.config = (config or EngineConfig()).resolved()
        self.device = torch.device(self.config.device)
        self.on_stage = on_stage
        self.on_progress = on_progress
        self._masker = None
        self._kenet = None

    # ----------------------------------------------------------------------------- stages
    @property
    def masker(self):
        """The configured masker, built on first use (loads weights once)."""
        if self._masker is None:
            if self.config.masker.resolved_name() == "blur" and self.config.masker.blur_map == "kenet":
                from mkgan_engine.maskers.blur import BlurMasker

                self._masker = BlurMasker(self.config.masker, model=self.kenet_model)  # one KENet for map and kernels
            else:
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
        exists for ``stem``, else the configured masker (its per-model seconds in ``.timings``)."""
        mask_dir = self.config.masker.mask_dir
        if mask_dir is not None and stem is not None:
            from mkgan_engine.maskers.user_mask import load_user_mask

            user = load_user_mask(Path(mask_dir), stem, image.shape[:2], self.config.masker)
            if user is not None:
                return user
            log.warning("no user mask for %s in %s; using the %s masker", stem, mask_dir, self.config.masker.resolved_name())
        return self.masker(image)

    def plan(self, image: np.ndarray, region_map: RegionMap) -> Plan:
        """The :class:`Plan` of an LR image (float32 HxWx3) split by ``region_map``; InputError when
        the map's size is not the image's."""
        if region_map.shape != image.shape[:2]:
            raise InputError(f"region map is {region_map.shape}, image is {image.shape[:2]}")
        return Plan.build(region_map, self.config.seed, self.config.scale)

    def estimate_kernels(self, image: np.ndarray, plan: Plan) -> list[RegionResult]:
        """One x2 kernel per region (image: float32 HxWx3 in [0,1]) with the configured estimator:
        KENet on windows inside each region, KernelGAN with all regions trained together as batched
        members, or KernelGAN started from the KENet kernels ("hybrid")."""
        return self.estimate_kernels_many([image], [plan])[0]

    def estimate_kernels_many(self, images: list[np.ndarray], plans: list[Plan]) -> list[list[RegionResult]]:
        """:meth:`estimate_kernels` for several images at once: KernelGAN trains the regions of all
        of them as one member batch (each region gets the kernel it gets alone)."""
        from mkgan_engine.train.kernel import analytic_x4

        estimator = self.config.kernel_estimator
        kernels: list[list[np.ndarray]] = [[] for _ in images]
        extras: list[list[dict[str, Any]]] = [[] for _ in images]
        if estimator in ("kenet", "hybrid"):
            from mkgan_engine.train.kenet import estimate_region_kernels

            for j, (image, plan) in enumerate(zip(images, plans)):
                for est in estimate_region_kernels(image, list(plan.masks), self.config.kenet, self.kenet_model, self.device):
                    kernels[j].append(est.kernel)
                    extras[j].append({"status": "ok", "restarts": 0, "notes": list(est.notes),
                                      "confidence": {"windows": est.windows, "spread_px": [round(v, 3) for v in est.spread_px]}})
        if estimator in ("kernelgan", "hybrid"):
            from mkgan_engine.train.kernelgan import estimate_kernels

            config = self.config.kernelgan
            if estimator == "hybrid":
                config = config.with_(kernel_model="gaussian")
            owner = [j for j, plan in enumerate(plans) for _ in plan.masks]  # the image of each member
            estimates = estimate_kernels([images[j] for j in owner], [m for plan in plans for m in plan.masks], config,
                                         [s for plan in plans for s in plan.kernel_seeds], device=self.device,
                                         start_kernels=[k for ks in kernels for k in ks] if estimator == "hybrid" else None)
            kenet_extras = [e for es in extras for e in es] or [{}] * len(estimates)
            kernels, extras = [[] for _ in images], [[] for _ in images]
            for j, est, k in zip(owner, estimates, kenet_extras):
                kernels[j].append(est.kernel)
                extras[j].append({"status": est.status, "restarts": est.restarts, "confidence": k.get("confidence"),
                                  "notes": k.get("notes", []) + list(est.messages)})
        return [
            [RegionResult(label=region.label, name=region.name, source=region.source, area_fraction=region.area_fraction,
                          kernel=kernel, kernel_x4=analytic_x4(kernel) if plan.scale == 4 else None,
                          estimator=estimator, **extra)
             for region, kernel, extra in zip(plan.region_map.regions, ks, es)]
            for plan, ks, es in zip(plans, kernels, extras)
        ]

    @property
    def kenet_model(self):
        """The KENet estimator, loaded (with its sha256 check) on first use."""
        if self._kenet is None:
            from mkgan_engine.train.kenet import load_kenet

            self._kenet = load_kenet(self.config.kenet.weights, self.device)
        return self._kenet

    def super_resolve(
        self, image: np.ndarray, plan: Plan, kernels: list[np.ndarray], timings: dict[str, float] | None = None
    ) -> tuple[np.ndarray, list[dict[str, float]]]:
        """ZSSR per region with that region's x2 kernel, merged with feathered masks at HR.

        image: float32 HxWx3 in [0,1]; kernels: one x2 kernel per region (in plan order). Returns
        (float32 (H*s)x(W*s)x3 in [0,1], per region :func:`zssr_diagnostics`); ``timings``, when
        given, receives the "zssr" and "merge" seconds.
        """
        return self.super_resolve_many([image], [plan], [kernels], timings)[0]

    def super_resolve_many(
        self, images: list[np.ndarray], plans: list[Plan], kernels: list[list[np.ndarray]],
        timings: dict[str, float] | None = None,
    ) -> list[tuple[np.ndarray, list[dict[str, float]]]]:
        """:meth:`super_resolve` for several images at once: the regions of all of them train as one
        ZSSR member batch (:func:`~mkgan_engine.train.zssr.run_zssr_many`; each region gets what it
        gets alone). ``timings`` receives the seconds of all images together."""
        from mkgan_engine.train.zssr import ZSSRJob, run_zssr_many

        scale = self.config.scale
        jobs = [ZSSRJob(image, ks, list(plan.masks), list(plan.zssr_seeds)) for image, plan, ks in zip(images, plans, kernels)]
        with self._stage("zssr", timings):
            progress = None if self.on_progress is None else (lambda phase, done, total: self.on_progress(f"zssr {phase}", done, total))
            results = run_zssr_many(jobs, scale, self.config.zssr, device=self.device, progress=progress)
        out = []
        for zssr, plan in zip(results, plans):
            merged = len(zssr.images) > 1
            with self._stage("merge", timings if merged else None, announce=merged):
                out.append((plan.merge(zssr.images), [zssr_diagnostics(member) for member in zssr.members]))
        return out

    # ----------------------------------------------------------------------------- whole image
    def prepare(
        self,
        image: str | os.PathLike[str] | np.ndarray | LoadedImage,
        region_map: RegionMap | None = None,
        announce: bool = True,
    ) -> Prepared:
        """Read ``image``, check its size and split it into regions (``region_map`` skips the
        masker). Raises on bad input. announce: report the stages to ``on_stage`` (the batch
        prepares the next image while the current one trains, and passes False)."""
        timings: dict[str, float] = {}
        with self._stage("read", timings, announce):
            loaded = _as_loaded(image)
        rgb = loaded.rgb
        self.check_size(rgb)
        if region_map is None:
            with self._stage("mask", timings, announce):
                region_map = self.mask(rgb, loaded.path.stem if loaded.path else None)
            timings.update({f"mask_{k}": v for k, v in region_map.timings.items() if k != "total"})
        return Prepared(loaded, self.plan(rgb, region_map), timings)

    def finish(
        self,
        prepared: Prepared,
        ground_truth: np.ndarray | str | os.PathLike[str] | None = None,
        kernels: list[np.ndarray] | None = None,
    ) -> Result:
        """Kernels (or the given ``kernels``, one per region), ZSSR, merge, alpha and the metrics
        against ``ground_truth`` for a :meth:`prepare`-d image. Raises on bad input."""
        if kernels is not None and len(kernels) != len(prepared.plan.region_map):
            raise InputError(f"{len(kernels)} kernels for {len(prepared.plan.region_map)} regions")
        return self.finish_many([prepared], [ground_truth], None if kernels is None else [kernels])[0]

    def finish_many(
        self,
        prepared: list[Prepared],
        ground_truths: list[np.ndarray | str | os.PathLike[str] | None] | None = None,
        kernels: list[list[np.ndarray]] | None = None,
    ) -> list[Result]:
        """:meth:`finish` for several images packed together: the regions of all of them are one
        member batch for KernelGAN and one for ZSSR (the engine's throughput on a GPU), and every
        image gets the result it gets alone. Each image's stage timings are its share (1/N) of the
        packed stages. Raises on bad input (the batch runner then finishes the images one by one)."""
        plans = [p.plan for p in prepared]
        rgbs = [p.image.rgb for p in prepared]
        shared: dict[str, float] = {}
        if kernels is None:
            with self._stage("kernels", shared):
                regions = self.estimate_kernels_many(rgbs, plans)
        else:
            regions = [[RegionResult(r.label, r.name, "user", r.area_fraction, np.asarray(k, np.float32))
                        for r, k in zip(plan.region_map.regions, ks)] for plan, ks in zip(plans, kernels)]
        srs = self.super_resolve_many(rgbs, plans, [[r.kernel for r in rs] for rs in regions], shared)
        truths = ground_truths or [None] * len(prepared)
        return [self._result(p, rs, sr, zssr, {**p.timings, **{k: v / len(prepared) for k, v in shared.items()}}, truth)
                for p, rs, (sr, zssr), truth in zip(prepared, regions, srs, truths)]

    def _result(self, prepared: Prepared, regions: list[RegionResult], sr: np.ndarray, zssr: list[dict[str, float]],
                timings: dict[str, float], ground_truth: np.ndarray | str | os.PathLike[str] | None) -> Result:
        """The :class:`Result` of one finished image: alpha upscaled, metrics against ``ground_truth``."""
        loaded, plan = prepared.image, prepared.plan
        result = Result(input=str(loaded.path) if loaded.path else None, sr=sr, image=loaded, region_map=plan.region_map,
                        regions=[replace(r, zssr=z) for r, z in zip(regions, zssr)], timings=timings, size_lr=loaded.shape)
        if loaded.alpha is not None:
            result.alpha = _upscale_plane(loaded.alpha, plan.scale)
        if ground_truth is not None:
            from mkgan_engine.metrics import score

            try:  # score refuses images of different sizes (the SR image's first)
                metrics = score(sr, _as_loaded(ground_truth).rgb, plan.scale)
                result.metrics = {k: round(v, 5) for k, v in metrics.items()}
            except ValueError as error:
                result.metrics_error = f"ground truth not scored: {error}"
                log.warning("%s: %s", result.input, result.metrics_error)
        return result

    def run(
        self,
        image: str | os.PathLike[str] | np.ndarray | LoadedImage,
        ground_truth: np.ndarray | str | os.PathLike[str] | None = None,
        region_map: RegionMap | None = None,
        kernels: list[np.ndarray] | None = None,
    ) -> Result:
        """Super-resolve one image: :meth:`prepare` then :meth:`finish`. Raises on bad input (see
        :meth:`run_many` for a batch that records failures instead). ``region_map``/``kernels``
        skip the masking/estimation stages."""
        return self.finish(self.prepare(image, region_map), ground_truth, kernels)

    def run_many(self, paths: Iterable[str | os.PathLike[str]], **kwargs: Any) -> Iterator[Result]:
        """Stream results for many files as they finish; failures are yielded, never raised.
        See :func:`mkgan_engine.batch.run_batch` for the keyword arguments."""
        from mkgan_engine.batch import run_batch

        yield from run_batch(self, [Path(p) for p in paths], **kwargs)

    # ----------------------------------------------------------------------------- helpers
    @contextmanager
    def _stage(self, name: str, timings: dict[str, float] | None, announce: bool = True):
        """Announce a stage to ``on_stage`` and add its seconds to ``timings`` (when given)."""
        if announce and self.on_stage is not None:
            self.on_stage(name)
        start = time.perf_counter()
        try:
            yield
        finally:
            if timings is not None:
                timings[name] = timings.get(name, 0.0) + time.perf_counter() - start


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
