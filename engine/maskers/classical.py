"""Weight-free maskers (the Multi-KernelGAN paper's "previous attempts", design.md section 2).

Each masker scores every pixel for "sharp / textured" content, thresholds the score at its image
mean (so no tuning per image), removes small islands and holes, and hands the object mask to
:func:`~mkgan_engine.maskers.postprocess.finalize` (closing, largest component, blocky grid,
minimum area). Object = the textured / sharp part (label 1), background = the rest (label 0).

* :class:`FFTMasker` ("fft", the default without YOLO/SAM weights): mean log-magnitude spectrum
  (DC excluded) of Hann-windowed, mean-removed 16 px patches on a 4 px grid.
* :class:`EdgeMasker` ("edges"): density of Canny edges (thresholds from Otsu on the log gradient
  magnitude) in a box window.
* :class:`GradientMasker` ("gradient"): anchors = local maxima of the gradient magnitude above the
  same "sharp" level, grown into a region by their density in a box window.
* :class:`WholeImageMasker` ("none"): one region, plain KernelGAN.

Patch / density scores are "min over the windows containing the pixel", so windows straddling
the object's border (which look textured because they see the border) do not grow the object.

Everything is vectorised (numpy / scipy.fft / OpenCV); a 512x512 image masks in ~0.1 s on one core.
"""

from __future__ import annotations

import cv2
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import fft as sp_fft
from skimage.filters import threshold_otsu

from mkgan_engine.config import MaskerConfig
from mkgan_engine.imageio import luma
from mkgan_engine.maskers.postprocess import finalize, remove_small_islands
from mkgan_engine.regions import RegionMap

__all__ = ["EdgeMasker", "FFTMasker", "GradientMasker", "WholeImageMasker"]


def _grey(image: np.ndarray) -> np.ndarray:
    """float32 HxW luma in [0, 255] (the scale the score thresholds are set on) of the masker input,
    float32 HxWx3 RGB in [0, 1] (:class:`~mkgan_engine.maskers.base.Masker`)."""
    return luma(image) * 255.0


def _window(shape: tuple[int, int]) -> int:
    """Odd neighbourhood side for density maps: 1/16 of the short side, 15..63 px (512 -> 33)."""
    w = int(np.clip(round(min(shape) / 16), 15, 63))
    return w | 1


def _island_size(config: MaskerConfig, shape: tuple[int, int]) -> int:
    """Islands / holes smaller than this are removed before post-processing."""
    return int(max(16, min(config.region_area, 0.02 * shape[0] * shape[1])))


def _threshold_at_mean(score: np.ndarray) -> np.ndarray:
    return score > float(score.mean())


def _gradient_magnitude(grey: np.ndarray, sigma: float = 0.0) -> np.ndarray:
    """Sobel magnitude (L2, Canny's units) of the grey image, Gaussian-smoothed first if sigma > 0."""
    smooth = cv2.GaussianBlur(grey, (0, 0), sigma) if sigma > 0 else grey
    gx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1, ksize=3)
    return cv2.magnitude(gx, gy)


def _strong_gradient(mag: np.ndarray) -> float:
    """Gradient magnitude separating "sharp" from "smooth/blurred" pixels: Otsu's threshold on
    log(1 + magnitude), so low-contrast fine texture still counts as sharp."""
    return float(np.expm1(threshold_otsu(np.log1p(mag))))


def _min_over_windows(density: np.ndarray, win: int) -> np.ndarray:
    """Per pixel, the lowest density of the win x win windows that contain it (grey erosion):
    windows straddling the object's border are dense, the minimum keeps them from growing it."""
    return cv2.erode(density, np.ones((win, win), np.uint8), borderType=cv2.BORDER_REPLICATE)


class _ClassicalMasker:
    name = "classical"

    def __init__(self, config: MaskerConfig | None = None) -> None:
        self.config = config or MaskerConfig(name=self.name)  # type: ignore[arg-type]

    def score(self, image: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        """float32 HxW "sharp/textured" score (higher = object)."""
        raise NotImplementedError

    def object_mask(self, image: np.ndarray) -> np.ndarray:
        """bool HxW raw object mask: score above its mean, small islands and holes removed."""
        score = self.score(image)
        if not np.isfinite(score).all() or float(score.max() - score.min()) <= 1e-6:
            return np.zeros(score.shape, bool)  # flat score: nothing stands out
        mask = _threshold_at_mean(score)
        return remove_small_islands(mask, _island_size(self.config, mask.shape))

    def __call__(self, image: np.ndarray) -> RegionMap:
        mask = self.object_mask(image)
        return finalize(mask, self.config, self.name,
                        empty_reason=f"nothing detected (the {self.name} masker found no sharp/textured part)")


class FFTMasker(_ClassicalMasker):
    """Patch-FFT texture masker.

    patch: patch side (default 16 px, 32 px when the short side exceeds 768 px); stride: patch
    step (default patch // 4). A patch's score is the mean of log(1 + |FFT|) over all frequencies
    but DC (grey in [0, 255]), after removing its mean and applying a 2-D Hann window (no leakage
    from patch borders); a pixel's score is the lowest score of the patches covering it, so the
    textured patches straddling the object's border do not grow the object by half a patch.
    """

    name = "fft"

    def __init__(self, config: MaskerConfig | None = None, patch: int | None = None, stride: int | None = None) -> None:
        super().__init__(config)
        self.patch = patch
        self.stride = stride

    def score(self, image: np.ndarray) -> np.ndarray:
        grey = _grey(image)
        h, w = grey.shape
        p = self.patch or (32 if min(h, w) > 768 else 16)
        p = max(4, min(p, h, w))
        s = max(1, min(p, self.stride or p // 4))
        view = sliding_window_view(grey, (p, p))[::s, ::s]  # gh, gw, p, p
        gh, gw = view.shape[:2]
        integral = cv2.integral(grey, sdepth=cv2.CV_64F)
        y0, x0 = np.arange(gh) * s, np.arange(gw) * s
        sums = (integral[np.ix_(y0 + p, x0 + p)] - integral[np.ix_(y0, x0 + p)]
                - integral[np.ix_(y0 + p, x0)] + integral[np.ix_(y0, x0)])
        patches = view - (sums / (p * p)).astype(np.float32)[:, :, None, None]
        hann = np.hanning(p + 2)[1:-1].astype(np.float32)
        patches *= np.outer(hann, hann)
        spectrum = sp_fft.rfft2(patches, workers=1)  # complex64 gh, gw, p, p//2+1
        parts = spectrum.view(np.float32).reshape(-1, 2)
        magnitude = cv2.magnitude(np.ascontiguousarray(parts[:, 0]), np.ascontiguousarray(parts[:, 1]))
        log_mag = cv2.log(cv2.add(magnitude, 1.0)).reshape(spectrum.shape)  # log(1 + |F|)
        log_mag[..., 0, 0] = 0.0  # DC
        grid = log_mag.sum(axis=(2, 3), dtype=np.float32) / np.float32(log_mag[0, 0].size - 1)
        return _min_over_covering(grid, p, s, (h, w))


def _min_over_covering(grid: np.ndarray, p: int, s: int, shape: tuple[int, int]) -> np.ndarray:
    """Per pixel, the lowest score of the patches (side p, step s, on ``grid``) that cover it.

    A patch straddling the object's border is textured; taking the minimum keeps that from
    growing the object by half a patch. Computed per s x s cell (the cell covered by patches
    c-k+1..c, k = ceil(p / s)); cells past the last patch use the last one.
    """
    h, w = shape
    k = max(1, -(-p // s))

    def pool(g: np.ndarray, axis: int, ncell: int) -> np.ndarray:
        n = g.shape[axis]
        idx = np.clip(np.arange(ncell)[:, None] - np.arange(k)[None, :], 0, n - 1)  # ncell, k
        return np.take(g, idx, axis=axis).min(axis=axis + 1)

    cells = pool(pool(grid, 0, -(-h // s)), 1, -(-w // s))
    return np.repeat(np.repeat(cells, s, axis=0), s, axis=1)[:h, :w]


class _DensityMasker(_ClassicalMasker):
    """A masker scoring pixels by the density of detected points (edges, anchors) in a window."""

    def __init__(self, config: MaskerConfig | None = None, window: int | None = None) -> None:
        super().__init__(config)
        self.window = window

    def window_density(self, points: np.ndarray) -> np.ndarray:
        """points: bool HxW -> float32 HxW: the share of points in a ``window``-sided box (default
        :func:`_window`), then the lowest density of the windows containing each pixel."""
        win = self.window or _window(points.shape)
        density = cv2.boxFilter(points.astype(np.float32), -1, (win, win), borderType=cv2.BORDER_REFLECT)
        return _min_over_windows(density, win)


class EdgeMasker(_DensityMasker):
    """Edge-density masker: Canny edges of the unsmoothed image (high threshold = the "sharp"
    gradient level of :func:`_strong_gradient` measured on the sigma-1 smoothed image, low = half
    of it), averaged in a ``window``-sided box (default 1/16 of the short side), then the lowest
    density of the windows containing each pixel."""

    name = "edges"

    def score(self, image: np.ndarray) -> np.ndarray:
        grey = _grey(image)
        mag = _gradient_magnitude(grey, sigma=1.0)
        if float(mag.max()) <= 1e-6:
            return np.zeros(grey.shape, np.float32)
        high = _strong_gradient(mag)
        edges = cv2.Canny(np.clip(grey + 0.5, 0, 255).astype(np.uint8), high / 2, high, L2gradient=True)
        return self.window_density(edges > 0)


class GradientMasker(_DensityMasker):
    """Gradient-anchor masker: anchors are the 3x3 local maxima of the gradient magnitude that are
    "sharp" (:func:`_strong_gradient`); their density in a ``window``-sided box (default 1/16 of
    the short side, the lowest density of the windows containing each pixel) grows them into a
    region."""

    name = "gradient"

    def score(self, image: np.ndarray) -> np.ndarray:
        grey = _grey(image)
        mag = _gradient_magnitude(grey)
        if float(mag.max()) <= 1e-6:
            return np.zeros(grey.shape, np.float32)
        strong = mag >= _strong_gradient(mag)
        local_max = mag >= cv2.dilate(mag, np.ones((3, 3), np.uint8))
        return self.window_density(strong & local_max)


class WholeImageMasker:
    """One region covering the whole image (plain KernelGAN, "--masker none")."""

    name = "none"

    def __init__(self, config: MaskerConfig | None = None) -> None:
        self.config = config or MaskerConfig(name="none")

    def __call__(self, image: np.ndarray) -> RegionMap:
        return RegionMap.single(np.asarray(image).shape[:2], source=self.name)
