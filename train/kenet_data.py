"""Synthetic degradations for training KENet: (LR window, true x2 kernel) pairs made on the fly.

Per sample: a random HR crop (of a grey photo; 1 in 4 photos used at half size, a sharper "HR"),
one of the 8 flips/rotations, a random kernel of the benchmark family (anisotropic Gaussian with
both sigmas ~ U(``sigma_range``) px - protocol U's variance range 0.35-5.0 px^2 extended down to
sharp kernels - theta ~ U(0, pi), 11x11 or 13x13 support, DIV2KRK-style multiplicative tap noise),
blur by correlation and subsampling by 2 (:func:`degradation.blur_downsample`), then mild Gaussian
noise, 8-bit quantisation and JPEG compression (:func:`degradation.noise_and_jpeg`). The image is
transformed, not the kernel, so the kernel needs no rotation; every kernel is 13x13 at the
sf-aligned centre 6.5.

Training uses BSD68 and Urban100 only; Set5 and Set14 are evaluation sets and never seen here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .degradation import blur_downsample, noise_and_jpeg, random_kernel
from .sampler import to_grey

TRAIN_SETS = ("bsd68", "urban100")
MARGIN = 4  # LR pixels cut from each side of the blurred crop (reflect padding never reaches the window)


@dataclass(frozen=True)
class DegradationConfig:
    """The synthetic degradation family. Sizes in LR pixels, sigmas in HR pixels, noise in [0, 1] units."""

    window: int = 64
    kernel_size: int = 13
    sigma_range: tuple[float, float] = (0.45, 2.25)
    small_support_prob: float = 0.5  # 11x11 kernels (protocol U's support), zero-padded to 13x13
    tap_noise: float = 0.4
    tap_noise_prob: float = 0.5
    noise_prob: float = 0.4
    noise_max: float = 3.0 / 255.0
    jpeg_prob: float = 0.4
    jpeg_quality: tuple[int, int] = (70, 95)
    half_size_prob: float = 0.25
    min_window_std: float = 0.03  # flat windows carry no kernel information: redrawn


def load_training_images(root: Path, sets: tuple[str, ...] = TRAIN_SETS) -> list[tuple[str, np.ndarray]]:
    """(name, float32 HxW luma in [0, 1]) for every PNG of the training sets under ``root``."""
    from mkgan_engine.imageio import read_image

    for name in sets:
        if name in ("set5", "set14"):
            raise ValueError(f"{name} is an evaluation set; KENet is trained on {TRAIN_SETS} only")
    images = []
    for name in sets:
        for path in sorted((root / name).glob("*.png")):
            images.append((f"{name}/{path.name}", to_grey(read_image(path).rgb).astype(np.float32)))
    if not images:
        raise FileNotFoundError(f"no training images under {root} ({', '.join(sets)})")
    return images


def held_aside(photos: list[tuple[str, np.ndarray]]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(training images, held-aside images): every 8th photo of :func:`load_training_images` (sorted by
    name) is held aside for validation and calibration, never trained on."""
    train = [image for i, (_, image) in enumerate(photos) if i % 8 != 0]
    held = [image for i, (_, image) in enumerate(photos) if i % 8 == 0]
    return train, held


def random_training_kernel(rng: np.random.Generator, config: DegradationConfig) -> np.ndarray:
    """float32 13x13 kernel of the family, sum 1, at the sf-aligned centre."""
    small = rng.uniform() < config.small_support_prob
    size = config.kernel_size - 2 if small else config.kernel_size
    tap_noise = config.tap_noise if rng.uniform() < config.tap_noise_prob else 0.0
    kernel, _ = random_kernel(rng, size=size, scale=2, tap_noise=tap_noise, sigma_range=config.sigma_range)
    if small:
        kernel = np.pad(kernel, 1)
    return kernel.astype(np.float32)


class DegradationSampler:
    """Draws training batches from a list of grey HR photos; all randomness from one numpy generator."""

    def __init__(self, images: list[np.ndarray], config: DegradationConfig, rng: np.random.Generator) -> None:
        import cv2

        self.config = config
        self.rng = rng
        hr_side = 2 * (config.window + 2 * MARGIN)
        self.images = [im for im in images if min(im.shape) >= hr_side]
        self.halves = [cv2.resize(im, (im.shape[1] // 2, im.shape[0] // 2), interpolation=cv2.INTER_AREA)
                       for im in self.images]
        self.halves = [im for im in self.halves if min(im.shape) >= hr_side]
        if not self.images:
            raise ValueError(f"no training image is at least {hr_side}x{hr_side} px")
        self.hr_side = hr_side

    def _crop(self) -> np.ndarray:
        pool = self.halves if self.halves and self.rng.uniform() < self.config.half_size_prob else self.images
        image = pool[self.rng.integers(len(pool))]
        top = self.rng.integers(image.shape[0] - self.hr_side + 1)
        left = self.rng.integers(image.shape[1] - self.hr_side + 1)
        crop = image[top : top + self.hr_side, left : left + self.hr_side]
        crop = np.rot90(crop, self.rng.integers(4))
        return np.ascontiguousarray(crop[:, ::-1] if self.rng.uniform() < 0.5 else crop)

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(windows float32 (size, 1, W, W) in [0, 1], kernels float32 (size, 13, 13))."""
        c = self.config
        windows, kernels = [], []
        while len(windows) < size:
            need = size - len(windows)
            crops = torch.from_numpy(np.stack([self._crop() for _ in range(need)]))[:, None]
            ks = np.stack([random_training_kernel(self.rng, c) for _ in range(need)])
            lr = blur_downsample(crops, torch.from_numpy(ks), 2)[:, 0, MARGIN:-MARGIN, MARGIN:-MARGIN].numpy()
            for window, kernel in zip(lr, ks):
                noise = self.rng.uniform(0, c.noise_max) if self.rng.uniform() < c.noise_prob else 0.0
                quality = int(self.rng.integers(c.jpeg_quality[0], c.jpeg_quality[1] + 1)) if self.rng.uniform() < c.jpeg_prob else None
                window = noise_and_jpeg(window, self.rng, noise, quality)
                if window.std() >= c.min_window_std:
                    windows.append(window)
                    kernels.append(kernel)
        return torch.from_numpy(np.stack(windows))[:, None], torch.from_numpy(np.stack(kernels))
