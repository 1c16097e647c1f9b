"""Typed training configurations with the reference ("paper") and CPU-friendly ("fast") presets.

Reference settings are from the KernelGAN and ZSSR papers (see README, "Algorithms").
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, get_args

Preset = Literal["fast", "paper"]
KernelModel = Literal["deep-linear", "gaussian"]
ENSEMBLE_SIZES = (1, 2, 4, 8)  # ZSSR self-ensemble sizes (zssr_inference.ENSEMBLE_ORDER)
KERNEL_MODELS: tuple[str, ...] = get_args(KernelModel)


@dataclass(frozen=True)
class KernelGANConfig:
    """KernelGAN at x2 (x4 kernels are derived analytically from the x2 kernel).

    Sizes are in LR pixels; learning rates are Adam step sizes. ``cuda_graphs`` (CUDA-graph capture of
    the training step) is unverified until benchmarks/gpu_check.sh has run on a GPU, hence off.
    """

    iterations: int = 3000
    crop_size: int = 64  # generator input crop; the discriminator sees crops of the G output size (26)
    g_channels: int = 64
    g_kernel_sizes: tuple[int, ...] = (7, 5, 3, 1, 1, 1)  # last 1x1 has stride 2; receptive field 13
    # "deep-linear": the reference generator; "gaussian": the kernel is an anisotropic Gaussian with
    # three trainable parameters (a kernel prior; trained at `gaussian_lr`, without the sparsity term,
    # since a Gaussian is compact by construction; sigmas >= `gaussian_min_sigma` px, 0.55 being just
    # under the sharpest DIV2KRK-style kernel, sigma 0.59). See README, "Known limits".
    kernel_model: KernelModel = "deep-linear"
    gaussian_lr: float = 5e-3
    gaussian_min_sigma: float = 0.55
    d_channels: int = 64
    d_kernel_size: int = 7
    d_layers: int = 7  # 7x7 SN conv, 5 x [SN 1x1, BN, ReLU], SN 1x1 -> sigmoid
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    lr_decay_every: int = 750  # lr /10 at 750, 1500, 2250
    lr_decay_factor: float = 0.1
    d_input_noise_std: float = 1.0 / 255.0
    # Generator loss weights and schedule.
    bicubic_weight: float = 5.0
    bicubic_threshold: float = 0.4  # once bicubic loss < this for `bicubic_patience` iterations ...
    bicubic_patience: int = 3
    bicubic_decay_every: int = 200  # ... divide its weight by `bicubic_decay` every this many iterations
    bicubic_decay: float = 100.0
    bicubic_floor: float = 5e-6
    regularizers_on_below: float = 5e-3  # when the bicubic weight drops below this: centralized, sparse on
    sum2one_weight: float = 0.5
    boundaries_weight: float = 0.5
    centralized_weight: float = 1.0
    sparse_weight: float = 5.0
    # Kernel extraction.
    kernel_size: int = 13
    kernel_keep_top: int = 40
    # Stability guard: restarts with a new seed when the kernel collapses or a loss is not finite.
    max_restarts: int = 2
    # On CUDA, capture one training step in a CUDA graph and replay it (train/graphs.py): the same
    # numbers as eager steps, fewer launches. Opt-in: unverified until benchmarks/gpu_check.sh has run
    # tests/test_gpu.py (captured == eager, no host sync per replayed step) on a GPU. Ignored elsewhere.
    cuda_graphs: bool = False

    @classmethod
    def preset(cls, name: Preset) -> "KernelGANConfig":
        if name == "paper":
            return cls()
        if name == "fast":
            # Fewer iterations with the same schedule shape, compressed in time.
            return cls(iterations=600, lr_decay_every=200, bicubic_decay_every=60)
        raise ValueError(f"unknown preset {name!r}; expected 'fast' or 'paper'")

    def with_(self, **changes: object) -> "KernelGANConfig":
        return replace(self, **changes)

    @property
    def generator_lr(self) -> float:
        """The generator's Adam step size for the kernel model."""
        return self.gaussian_lr if self.kernel_model == "gaussian" else self.lr_g

    @property
    def generator_sparse_weight(self) -> float:
        """The sparsity term's weight once the regularisers are on: zero for the gaussian kernel
        model (a Gaussian is compact by construction)."""
        return 0.0 if self.kernel_model == "gaussian" else self.sparse_weight


@dataclass(frozen=True)
class ZSSRConfig:
    """ZSSR with a given kernel. Sizes in pixels of the image being upscaled."""

    iterations: int = 3000
    crop_size: int = 128  # father crop (LR-image pixels); clipped to the image
    channels: int = 64
    depth: int = 8
    lr: float = 1e-3
    lr_min: float = 9e-6
    lr_policy_every: int = 60  # fit a line to recent reconstruction errors this often
    lr_policy_window: int = 60
    min_iterations: int = 256
    noise_std: float = 0.0  # optional noise added to the son (real photos)
    scale_jitter: bool = True
    ensemble: int = 8  # self-ensemble: the median over 1, 2, 4 or 8 flips/rotations at inference
    back_projection_iterations: int = 2
    amp: bool = True  # bf16/fp16 autocast on CUDA only
    # On CUDA, capture the training step in a CUDA graph and replay it (train/graphs.py; the same numbers
    # as eager steps). Opt-in: unverified until benchmarks/gpu_check.sh has run tests/test_gpu.py on a GPU.
    cuda_graphs: bool = False
    # --- train/zssr.py details (see its module docstring) ---
    batch_size: int = 1  # father crops per member per iteration
    rec_every: int = 10  # reconstruction error (fixed son->father crops) measured this often
    rec_crops: int = 2  # fixed crops (from the member's region) the reconstruction error is measured on
    lr_slope_ratio: float = 1.0  # lr /lr_decay unless -slope > ratio * std error of the slope
    lr_decay: float = 10.0
    region_min_inside: float = 0.9  # father crop centres where >= this fraction of the crop is in the region
    region_share: float = 1.0  # a region's father crops come from it with this probability, else from the whole image
    scale_jitter_levels: tuple[float, ...] = (1.0, 0.85, 0.7)  # downscaled copies fathers are also drawn from
    inference_margin: int = 16  # LR pixels around a region that are super-resolved too (at least the merge's feather band)
    tile: int | None = None  # inference tiles of this side (LR pixels); None: the largest that fits max_memory_mb
    max_memory_mb: int = 1024  # working memory of one inference tile (see zssr_inference.tile_side)
    gradual_x4: bool = True  # x4 as two x2 steps with the x2 kernel (else one x4 step, analytic x4 kernel)
    x4_warm_start: bool = True  # the second x2 step starts from the first step's weights

    def __post_init__(self) -> None:
        if self.ensemble not in ENSEMBLE_SIZES:
            raise ValueError(f"ensemble must be one of {', '.join(map(str, ENSEMBLE_SIZES))}, got {self.ensemble}")
        if self.tile is not None and self.tile < 1:
            raise ValueError(f"tile must be a positive number of LR pixels, got {self.tile}")

    @classmethod
    def preset(cls, name: Preset) -> "ZSSRConfig":
        if name == "paper":
            return cls()
        if name == "fast":
            # CPU-sized: 48-px fathers (~5 it/s on one core), 320 iterations, policy every 40; no
            # self-ensemble (8x the inference for +0.00-0.05 dB on S-medium-8, RESULTS.md
            # "inference-settings"; back-projection, worth 0.2-1 dB, stays).
            return cls(
                iterations=320, crop_size=48, lr_policy_every=40, lr_policy_window=40, min_iterations=120, rec_every=8,
                ensemble=1,
            )
        raise ValueError(f"unknown preset {name!r}; expected 'fast' or 'paper'")

    def with_(self, **changes: object) -> "ZSSRConfig":
        return replace(self, **changes)


KernelEstimator = Literal["kernelgan", "kenet", "hybrid"]
KERNEL_ESTIMATORS: tuple[str, ...] = get_args(KernelEstimator)
Combine = Literal["mean", "median"]


@dataclass(frozen=True)
class KENetEstimatorConfig:
    """How KENet estimates a region's kernel from windows (see :mod:`kenet`). Sizes in LR pixels.

    stride: spacing of the window grid; windows are centred where the crop-inside-region rule of the
    KernelGAN sampler (:func:`sampler.allowed_centres`) allows a window; min_window_std: windows whose
    luma standard deviation is below this are flat (no blur information) and skipped, unless the
    region has nothing else; max_windows: the most textured ones are kept; dihedral: also average over
    the 8 flips/rotations of every window (the kernel transformed back; 8x the work, and no better in
    ``kernel-recovery``, so off by default); combine: how the windows'
    second moments (var_x, var_y from upright windows, cov_xy from windows rotated by 45 degrees)
    become the region's: "mean" or "median" (the kernel is the Gaussian with those moments);
    weights: a KENet weights file (default: the one shipped in the package).
    """

    stride: int = 32
    min_window_std: float = 0.03
    max_windows: int = 64
    dihedral: bool = False
    combine: Combine = "mean"
    weights: str | None = None

    def with_(self, **changes: object) -> "KENetEstimatorConfig":
        return replace(self, **changes)
