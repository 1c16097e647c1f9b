"""Typed configuration of the engine: masking, training presets, outputs, devices."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mkgan_engine.train.config import KERNEL_ESTIMATORS, KENetEstimatorConfig, KernelEstimator, KernelGANConfig, Preset, ZSSRConfig

MaskerName = Literal["auto", "yolo-sam", "sam", "fft", "edges", "gradient", "none"]
BackendName = Literal["torch", "onnxruntime", "tensorrt", "aoti"]
SamType = Literal["vit_b", "vit_l", "vit_h"]

MASKER_NAMES: tuple[str, ...] = ("auto", "yolo-sam", "sam", "fft", "edges", "gradient", "none")
BACKEND_NAMES: tuple[str, ...] = ("torch", "onnxruntime", "tensorrt", "aoti")


@dataclass
class MaskerConfig:
    """How an image is split into regions.

    name "auto" means yolo-sam when YOLO and SAM weights (or exported engines) are given, else
    "none" (one kernel for the whole image: with KENet it never scored below ZSSR with the bicubic
    kernel on the benchmark images, where the texture-based "fft" masker did once; see README).
    backend: which runtime runs YOLO/SAM (torch loads the user's .pt/.pth; the others load the files
    written by ``mkgan-engine export`` from ``engines_dir``). mask_dir: user masks (same stem as the
    image, single-channel PNG, >0 = object or a label map) that bypass the masker.
    Areas are in LR pixels; blocky_factor is the nearest-neighbour down/up scale of the mask.
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
    min_region_area: int = 64 * 64  # KernelGAN needs room for 64x64 crops
    device: str = "cpu"

    def resolved_name(self) -> str:
        """The masker that "auto" stands for with these weights."""
        if self.name != "auto":
            return self.name
        has_models = (self.yolo_weights and self.sam_checkpoint) or self.engines_dir
        return "yolo-sam" if has_models else "none"


@dataclass
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


@dataclass
class EngineConfig:
    """Everything the engine needs. ``kernelgan``/``zssr`` default to the ``preset``'s settings.

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
        if self.kernelgan is None:
            self.kernelgan = KernelGANConfig.preset(self.preset)
        if self.zssr is None:
            self.zssr = ZSSRConfig.preset(self.preset)
