"""Typed configuration of the engine: masking, training presets, outputs, devices."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, get_args

from mkgan_engine.train.config import KERNEL_ESTIMATORS, KENetEstimatorConfig, KernelEstimator, KernelGANConfig, Preset, ZSSRConfig

MaskerName = Literal["auto", "yolo-sam", "sam", "blur", "fft", "edges", "gradient", "none"]
BlurMapName = Literal["kenet", "reblur"]
BackendName = Literal["torch", "onnxruntime", "tensorrt", "aoti"]
SamType = Literal["vit_b", "vit_l", "vit_h"]
SAM_TYPES: tuple[str, ...] = get_args(SamType)

MASKER_NAMES: tuple[str, ...] = get_args(MaskerName)
BLUR_MAP_NAMES: tuple[str, ...] = get_args(BlurMapName)
BACKEND_NAMES: tuple[str, ...] = get_args(BackendName)


@dataclass(frozen=True)
class MaskerConfig:
    """How an image is split into regions.

    name "auto" means yolo-sam when YOLO and SAM weights (or exported engines) are given, else
    "blur" (regions where the local blur differs, K = 1..max_regions per image; on S-medium-8 it
    gains 0.6 dB over one kernel, and picks one region on 7 of 8 uniformly blurred images; see
    docs/blur-masker.md). backend: which runtime runs YOLO/SAM (torch loads the user's .pt/.pth;
    the others load the files written by ``mkgan-engine export`` from ``engines_dir``). mask_dir: user masks (same stem as the
    image, single-channel PNG, >0 = object or a label map) that bypass the masker.
    Areas are in LR pixels; blocky_factor is the nearest-neighbour down/up scale of the mask.
    max_regions: the most regions the "blur" masker makes (it picks 1..max_regions per image);
    blur_map: its local blur source, "kenet" (the shipped estimator on windows) or "reblur" (the
    weight-free Zhuo & Sim edge re-blur measure).
    """

    name: MaskerName = "auto"
    backend: BackendName = "torch"
    yolo_weights: Path | None = None
    sam_checkpoint: Path | None = None
    sam_type: SamType = "vit_b"
    engines_dir: Path | None = None
    mask_dir: Path | None = None
    detection_confidence: float = 0.5
    sam_mask_threshold: float = 0.5  # on the mask probability (sigmoid of SAM's logits)
    blocky_factor: float = 0.15
    min_region_area: int | None = None  # None: the crop of the trainers in use (EngineConfig.resolved)
    max_regions: int = 3
    blur_map: BlurMapName = "kenet"
    device: str = "cpu"

    @property
    def region_area(self) -> int:
        """The minimum region area in LR px^2: ``min_region_area``, or when that is None (not given)
        room for one KernelGAN crop (64x64); :meth:`EngineConfig.resolved` fills it in from the
        trainers the engine will use."""
        return KernelGANConfig.crop_size**2 if self.min_region_area is None else self.min_region_area

    def resolved_name(self) -> str:
        """The masker that "auto" stands for with these weights."""
        if self.name != "auto":
            return self.name
        has_models = (self.yolo_weights and self.sam_checkpoint) or self.engines_dir
        return "yolo-sam" if has_models else "blur"


@dataclass(frozen=True)
class OutputConfig:
    """What is written per image, next to ``<stem><suffix>.<ext>``.

    suffix may contain ``{scale}``; ext "same" keeps the input's format (a GIF's becomes PNG);
    jpeg_quality (1-100) applies to JPEG and WebP SR images. JPEG cannot hold alpha (such an image
    fails instead of losing it); JPEG and WebP hold 8 bits (a 16-bit input is written in 8 bits).
    """

    suffix: str = "_x{scale}"
    ext: Literal["png", "jpg", "webp", "tif", "same"] = "png"
    jpeg_quality: int = 95
    save_kernels: bool = True
    save_masks: bool = True
    save_previews: bool = False
    reports: tuple[str, ...] = ("json", "csv")
    skip_existing: bool = False


def region_crop(estimator: str, kernelgan: KernelGANConfig, zssr: ZSSRConfig) -> int:
    """The crop side (LR px) every masker region must hold for the trainers that will use it: KernelGAN's
    crop with the "kernelgan"/"hybrid" estimators; with "kenet", ZSSR's father crop (KENet's windows
    shrink to 48 or 32 px in a region too small for 64-px ones), at least 32 px."""
    if estimator == "kenet":
        return max(32, zssr.crop_size)
    return kernelgan.crop_size


@dataclass(frozen=True)
class EngineConfig:
    """Everything the engine needs, as asked for; :meth:`resolved` fills in the defaults
    (``kernelgan``/``zssr`` from the ``preset``, the device) and :class:`~mkgan_engine.Engine` runs
    on the resolved copy.

    scale: 2 or 4 (x4 = analytic kernel, gradual ZSSR x2 then x4); device: "auto", "cpu", "cuda",
    "cuda:1"...; seed: base seed (each region/member derives its own); kernel_estimator: how each
    region's kernel is found - "kenet" (the learned estimator shipped with the package, one forward
    pass per window), "kernelgan" (the internal GAN, ``kernelgan`` settings) or "hybrid" (KernelGAN's
    gaussian kernel model started from the KENet kernel); kenet: KENet's window settings.
    """

    scale: int = 2
    preset: Preset = "fast"
    device: str = "auto"
    seed: int = 0
    masker: MaskerConfig = field(default_factory=MaskerConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    kernel_estimator: KernelEstimator = "kenet"
    kenet: KENetEstimatorConfig = field(default_factory=KENetEstimatorConfig)
    kernelgan: KernelGANConfig | None = None
    zssr: ZSSRConfig | None = None

    def __post_init__(self) -> None:
        if self.scale not in (2, 4):
            raise ValueError(f"scale must be 2 or 4, got {self.scale}")
        if self.kernel_estimator not in KERNEL_ESTIMATORS:
            raise ValueError(f"kernel_estimator must be one of {', '.join(KERNEL_ESTIMATORS)}, got {self.kernel_estimator!r}")

    def resolved(self) -> EngineConfig:
        """A copy with every default decided: ``kernelgan``/``zssr`` from the preset when not given,
        ``device`` "auto" -> "cuda" when available else "cpu" (other names checked as given), and the
        masker on that device. Raises :class:`~mkgan_engine.device.DeviceError` for a device that
        cannot be used. Resolving a resolved config changes nothing."""
        from mkgan_engine.device import resolve_device

        device = str(resolve_device(self.device))
        kernelgan = KernelGANConfig.preset(self.preset) if self.kernelgan is None else self.kernelgan
        zssr = ZSSRConfig.preset(self.preset) if self.zssr is None else self.zssr
        masker = replace(self.masker, device=device)
        if masker.min_region_area is None:  # not given: the crop of the trainers in use
            masker = replace(masker, min_region_area=region_crop(self.kernel_estimator, kernelgan, zssr) ** 2)
        return replace(self, device=device, masker=masker, kernelgan=kernelgan, zssr=zssr)
