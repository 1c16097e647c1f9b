"""The blur masker ("blur"): regions where the blur differs, found from the degradation itself.

Texture maskers (fft, edges, gradient) split an image by *content*; this one splits it by *blur*:

1. A local blur map (:class:`BlurMap`) on a grid of windows (32 px, stride 8 by default). Two sources:
   * ``kenet`` (default): the shipped learned kernel estimator on every window; each window's kernel
     second moments (var_x, var_y, cov_xy, HR px^2; cov_xy from windows rotated by 45 degrees, as in
     :func:`mkgan_engine.train.kenet.window_moments`). KENet is trained on 64-px windows; on 32-px
     windows its moments are as unbiased and ~1.7x noisier (measured on U-medium-8), and the
     boundaries are twice as sharp. Flat windows (luma std < 0.03) carry no blur and are marked invalid.
   * ``reblur`` (weight-free, Zhuo & Sim 2011): at Canny edges the ratio R of the gradient magnitude
     before and after re-blurring with a Gaussian of sigma0 = 1 px gives the local edge blur
     sigma = sigma0 / sqrt(R^2 - 1) (LR px); each window takes the median over its edge pixels
     (isotropic: var_x = var_y = 4 sigma^2 HR px^2); windows with few edge pixels are invalid.
2. Each window's covariance becomes a point in log-Euclidean space (the matrix logarithm of the
   covariance; the distance of two isotropic kernels is sqrt(2) |log(variance ratio)|); invalid windows
   are filled and all are smoothed by normalised Gaussian averaging over neighbouring windows.
3. K-means (k-means++, fixed seed) into ``max_regions`` clusters, then the closest pair of centroids is
   merged while their distance is below ``merge_distance`` (0.5: kernels whose sizes differ by less
   than ~20 % in sigma), so K is chosen per image and a uniformly blurred photo gets K = 1. Features
   weight the kernel's size fully and its elongation by 0.5 (:func:`blur_features`). These settings
   were measured on S-/U-medium-8 (``benchmarks/masker_quality.py``, docs/blur-masker.md).
4. Pixels: the window features interpolated bilinearly to every pixel, each pixel to the nearest
   centroid (a window straddling a boundary sees a mix, so the boundary falls between the two sides'
   estimates). A region that cannot hold one crop of the trainers (``min_region_area``: 48 px with
   KENet, 64 px with KernelGAN) is a transition band between two others or too small: its centroid is dropped and its pixels go to the nearest remaining centroid.
5. :func:`~mkgan_engine.maskers.postprocess.finalize`: closing, largest component, blocky grid,
   minimum area - the rules every masker follows. Label 0 is the largest region.

The RegionMap carries ``maps["blur_sigma"]``: float32 HxW, the local kernel sigma (HR px, geometric
mean of the two axes) of the map, for previews.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage
from scipy.cluster.vq import kmeans2

from mkgan_engine.config import MaskerConfig
from mkgan_engine.maskers.postprocess import crop_side, finalize
from mkgan_engine.regions import RegionMap
from mkgan_engine.train.config import KENetEstimatorConfig
from mkgan_engine.train.crop_fit import holds_crop

__all__ = ["BlurMap", "BlurMapSettings", "BlurMasker", "blur_features", "kenet_blur_map", "reblur_blur_map", "blur_regions"]


MAX_WINDOWS_PER_SIDE = 40
"""The stride grows on images whose long side would need more windows (320 px at stride 8)."""
MIN_EDGE_PIXELS = 8
"""Canny edge pixels a ``reblur`` window needs to carry a blur estimate."""
KMEANS_SEED = 0


@dataclass(frozen=True)
class BlurMapSettings:
    """How the local blur map and its regions are made.

    window / stride: the windows of the map (LR px); smooth: std (in windows) of the normalised
    Gaussian averaging of the map; shape_weight: weight of the kernels' elongation against their size
    in the feature space (:func:`blur_features`); merge_distance: log-Euclidean distance below which
    two clusters' kernels count as alike. A window is flat (no blur information) when its luma std is
    below KENet's ``KENetEstimatorConfig.min_window_std`` (0.03), the same rule as the region estimator's.
    """

    window: int = 32
    stride: int = 8
    smooth: float = 1.0
    shape_weight: float = 0.5
    merge_distance: float = 0.5


@dataclass(frozen=True)
class BlurMap:
    """Local blur on a grid of window centres.

    rows / cols: int window-centre coordinates (LR px) of the grid (gh,), (gw,); moments: float64
    gh x gw x 3 (var_x, var_y, cov_xy) in HR px^2; valid: bool gh x gw, the windows that carry blur
    information; source: "kenet" or "reblur".
    """

    rows: np.ndarray
    cols: np.ndarray
    moments: np.ndarray
    valid: np.ndarray
    source: str

    def features(self, smooth: float, shape_weight: float = 1.0) -> np.ndarray:
        """float64 gh x gw x 3 :func:`blur_features`, invalid windows filled and everything smoothed by
        normalised Gaussian averaging (std ``smooth`` windows)."""
        feats = blur_features(self.moments, shape_weight)
        weight = self.valid.astype(np.float64)
        if not weight.any():
            return feats
        if not weight.all():  # fill invalid windows from the nearest valid one first
            _, (iy, ix) = ndimage.distance_transform_edt(~self.valid, return_indices=True)
            feats = feats[iy, ix]
        if smooth <= 0:
            return feats
        weight = np.maximum(weight, 0.05)  # filled windows count a little, so flat areas still follow
        num = ndimage.gaussian_filter(feats * weight[..., None], (smooth, smooth, 0), mode="nearest")
        den = ndimage.gaussian_filter(weight, smooth, mode="nearest")
        return num / den[..., None]

    def to_pixels(self, grid: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """gh x gw x C grid values -> float64 H x W x C, bilinear between window centres (nearest
        beyond the outermost ones)."""
        h, w = shape
        gy = np.interp(np.arange(h), self.rows, np.arange(len(self.rows)))
        gx = np.interp(np.arange(w), self.cols, np.arange(len(self.cols)))
        coords = np.meshgrid(gy, gx, indexing="ij")
        return np.stack([ndimage.map_coordinates(grid[..., c], coords, order=1, mode="nearest")
                         for c in range(grid.shape[-1])], axis=-1)

    def sigma_image(self, shape: tuple[int, int]) -> np.ndarray:
        """float32 HxW local kernel sigma (HR px, the geometric mean of the two axes), for previews."""
        size = self.to_pixels(self.features(0.0)[..., :1], shape)[..., 0]
        return np.exp(size / (2 * math.sqrt(2))).astype(np.float32)


# ----------------------------------------------------------------------------- log-Euclidean space
def log_covariance(moments: np.ndarray) -> np.ndarray:
    """(..., 3) var_x, var_y, cov_xy (px^2) -> (..., 3) (L_xx, L_yy, sqrt2 L_xy) of the matrix logarithm
    of the covariance (made positive definite: eigenvalues >= 0.05 px^2), so that the Euclidean distance
    of two feature vectors is the Frobenius distance of the two log-covariances."""
    m = np.asarray(moments, np.float64)
    cov = np.stack([np.stack([m[..., 0], m[..., 2]], -1), np.stack([m[..., 2], m[..., 1]], -1)], -2)
    values, vectors = np.linalg.eigh(cov)
    logs = np.log(np.maximum(values, 0.05))
    log_cov = (vectors * logs[..., None, :]) @ np.swapaxes(vectors, -1, -2)
    return np.stack([log_cov[..., 0, 0], log_cov[..., 1, 1], math.sqrt(2) * log_cov[..., 0, 1]], -1)


def blur_features(moments: np.ndarray, shape_weight: float = 1.0) -> np.ndarray:
    """(..., 3) moments -> (..., 3) (size, shape_1, shape_2): :func:`log_covariance` in an orthonormal
    basis whose first axis is the kernel's size, (L_xx + L_yy) / sqrt2 (= sqrt2 log of the geometric-mean
    variance), and whose other two are its elongation, scaled by ``shape_weight``: on real content
    KENet's elongation varies with the texture (fur, stripes) more than its size does."""
    logs = log_covariance(moments)
    size = (logs[..., 0] + logs[..., 1]) / math.sqrt(2)
    elongation = (logs[..., 0] - logs[..., 1]) / math.sqrt(2)
    return np.stack([size, shape_weight * elongation, shape_weight * logs[..., 2]], -1)


def feature_sigma(feature: np.ndarray) -> float:
    """The geometric-mean kernel sigma (HR px) of one :func:`blur_features` vector."""
    return float(np.exp(feature[0] / (2 * math.sqrt(2))))


# ----------------------------------------------------------------------------- the two map sources
def _grid(n: int, window: int, stride: int) -> np.ndarray:
    """Window centres along one axis: every ``stride`` px from the first full window, plus the last."""
    half = window // 2
    return np.unique(np.r_[np.arange(half, n - window + half + 1, stride), n - window + half])


def _window_centres(shape: tuple[int, int], settings: BlurMapSettings) -> tuple[np.ndarray, np.ndarray]:
    """Window-centre rows and columns: every ``stride`` px, the stride grown for a large image so that
    the long side has at most MAX_WINDOWS_PER_SIDE windows (the cost stays bounded)."""
    h, w = shape
    if min(h, w) < settings.window:
        raise ValueError(f"image is {w}x{h} px; the blur map needs at least {settings.window}x{settings.window} px")
    stride = max(settings.stride, -(-max(h, w) // MAX_WINDOWS_PER_SIDE))
    return _grid(h, settings.window, stride), _grid(w, settings.window, stride)


def _window_std(grey: np.ndarray, rows: np.ndarray, cols: np.ndarray, window: int) -> np.ndarray:
    """gh x gw luma standard deviation of each window (box filters of x and x^2)."""
    mean = cv2.boxFilter(grey, cv2.CV_64F, (window, window), normalize=True, borderType=cv2.BORDER_REFLECT)
    sq = cv2.boxFilter(grey * grey, cv2.CV_64F, (window, window), normalize=True, borderType=cv2.BORDER_REFLECT)
    # boxFilter centres an even window at (half, half) of the window starting at (y - half, x - half).
    var = np.maximum(sq - mean * mean, 0.0)[np.ix_(rows, cols)]
    return np.sqrt(var)


def kenet_blur_map(grey: np.ndarray, model, settings: BlurMapSettings = BlurMapSettings()) -> BlurMap:
    """The learned local blur map: KENet's kernel moments on every window (see the module docstring).

    grey: float64 HxW luma in [0, 1]; model: a loaded :class:`~mkgan_engine.train.kenet.KENet`.
    """
    from mkgan_engine.train.kenet import window_moments

    rows, cols = _window_centres(grey.shape, settings)
    centres = np.stack(np.meshgrid(rows, cols, indexing="ij"), -1).reshape(-1, 2)
    moments = window_moments(model, grey, centres, window=settings.window).reshape(len(rows), len(cols), 3)
    valid = _window_std(grey, rows, cols, settings.window) >= KENetEstimatorConfig().min_window_std
    return BlurMap(rows, cols, moments, valid, "kenet")


def edge_blur_sigma(grey: np.ndarray, sigma0: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Zhuo & Sim's defocus estimate at edges: (float64 HxW sigma in LR px, bool HxW edge pixels).

    grey: float HxW in [0, 1]. Edges: Canny on the 8-bit image (high threshold = Otsu on the gradient
    magnitude, low = half). R = |grad I| / |grad (I * G_sigma0)|; sigma = sigma0 / sqrt(R^2 - 1), clipped
    to [0, 5] px (R <= 1 gives 5: no measurable edge).
    """
    from skimage.filters import threshold_otsu

    image = grey.astype(np.float32)
    reblurred = cv2.GaussianBlur(image, (0, 0), sigma0)

    def magnitude(x: np.ndarray) -> np.ndarray:
        return cv2.magnitude(cv2.Sobel(x, cv2.CV_32F, 1, 0, ksize=1), cv2.Sobel(x, cv2.CV_32F, 0, 1, ksize=1))

    mag, mag_blur = magnitude(image), magnitude(reblurred)
    if float(mag.max()) <= 1e-6:
        return np.full(grey.shape, 5.0), np.zeros(grey.shape, bool)
    high = float(threshold_otsu(mag)) * 255.0
    edges = cv2.Canny(np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8), high / 2, high, L2gradient=True) > 0
    ratio = mag.astype(np.float64) / np.maximum(mag_blur, 1e-6)
    sigma = np.where(ratio > 1.0 + 1e-3, sigma0 / np.sqrt(np.maximum(ratio * ratio - 1.0, 1e-12)), 5.0)
    return np.clip(sigma, 0.0, 5.0), edges


def reblur_blur_map(grey: np.ndarray, settings: BlurMapSettings = BlurMapSettings()) -> BlurMap:
    """The weight-free local blur map (Zhuo & Sim 2011 at edges, median per window; see the module docstring)."""
    rows, cols = _window_centres(grey.shape, settings)
    sigma, edges = edge_blur_sigma(grey)
    half = settings.window // 2
    moments = np.zeros((len(rows), len(cols), 3))
    valid = np.zeros((len(rows), len(cols)), bool)
    for i, y in enumerate(rows):
        for j, x in enumerate(cols):
            patch_edges = edges[y - half : y + half, x - half : x + half]
            if patch_edges.sum() >= MIN_EDGE_PIXELS:
                s = float(np.median(sigma[y - half : y + half, x - half : x + half][patch_edges]))
                moments[i, j, :2] = 4.0 * s * s  # LR sigma -> HR kernel variance
                valid[i, j] = True
    return BlurMap(rows, cols, moments, valid, "reblur")


# ----------------------------------------------------------------------------- map -> regions
def _merge_alike(centroids: list[np.ndarray], counts: list[int], distance: float) -> list[np.ndarray]:
    """Merge the closest pair of centroids (count-weighted) while they are nearer than ``distance``."""
    centroids, counts = list(centroids), list(counts)
    while len(centroids) > 1:
        pairs = [(float(np.linalg.norm(centroids[i] - centroids[j])), i, j)
                 for i in range(len(centroids)) for j in range(i + 1, len(centroids))]
        gap, i, j = min(pairs)
        if gap >= distance:
            break
        centroids[i] = (centroids[i] * counts[i] + centroids[j] * counts[j]) / (counts[i] + counts[j])
        counts[i] += counts[j]
        del centroids[j], counts[j]
    return centroids


def _nearest(features: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """int32 HxW index of the nearest centroid of each pixel's (HxWx3) feature."""
    d = ((features[..., None, :] - centroids[None, None]) ** 2).sum(-1)
    return np.argmin(d, axis=-1).astype(np.int32)


def blur_regions(
    blur_map: BlurMap, shape: tuple[int, int], max_regions: int, crop: int,
    settings: BlurMapSettings = BlurMapSettings(),
) -> tuple[np.ndarray, np.ndarray]:
    """(int32 HxW labels 0..K-1, float64 Kx3 centroids): steps 2-4 of the module docstring.

    Label 0 is the largest region; every region holds a ``crop`` x ``crop`` window (the crop-fit rule
    of the post-processing), K = 1 when the blur is alike everywhere.
    """
    feats = blur_map.features(settings.smooth, settings.shape_weight)
    points = feats[blur_map.valid] if blur_map.valid.any() else feats.reshape(-1, 3)
    k = int(min(max(1, max_regions), len(points)))
    if k > 1:
        centres, assignment = kmeans2(points, k, minit="++", seed=KMEANS_SEED)
        counts = np.bincount(assignment, minlength=k)
        centroids = _merge_alike([centres[i] for i in range(k) if counts[i]], [int(c) for c in counts if c],
                                 settings.merge_distance)
    else:
        centroids = [points.mean(axis=0)]
    pixel_feats = blur_map.to_pixels(feats, shape)
    centroids = np.array(centroids)
    labels = _nearest(pixel_feats, centroids)
    while len(centroids) > 1:  # dissolve regions that cannot hold a crop (transition bands, slivers)
        failing = [(int((labels == i).sum()), i) for i in range(len(centroids)) if not holds_crop(labels == i, crop)]
        if not failing:
            break
        _, drop = min(failing)
        centroids = np.delete(centroids, drop, axis=0)
        labels = _nearest(pixel_feats, centroids)
    order = np.argsort(-np.bincount(labels.ravel(), minlength=len(centroids)))  # largest first -> label 0
    remap = np.empty_like(order)
    remap[order] = np.arange(len(order))
    return remap[labels].astype(np.int32), centroids[order]


def _region_names(centroids: np.ndarray) -> dict[int, str]:
    """"sharper"/"blurrier" (or "sharpest"/"medium"/"blurriest"...) by the centroid's mean sigma."""
    sigmas = [feature_sigma(c) for c in centroids]
    rank = np.argsort(np.argsort(sigmas))
    k = len(centroids)
    words = {1: ["whole image"], 2: ["sharper", "blurrier"], 3: ["sharpest", "medium blur", "blurriest"]}.get(
        k, [f"blur level {i + 1}" for i in range(k)])
    return {i: f"{words[rank[i]]} (sigma {sigmas[i]:.2f} px)" for i in range(k)}


class BlurMasker:
    """``--masker blur``: regions that follow the local blur (see the module docstring).

    config: uses ``blur_map`` ("kenet" or "reblur"), ``max_regions``, ``min_region_area`` (the crop every
    region must hold), ``blocky_factor`` and ``device`` (KENet). model: a loaded KENet to share (the
    :class:`~mkgan_engine.Engine` passes its own, so the map and the region kernels use the same
    weights); without one the shipped weights are loaded on first use.
    """

    name = "blur"

    def __init__(self, config: MaskerConfig | None = None, settings: BlurMapSettings = BlurMapSettings(),
                 model=None) -> None:
        self.config = config or MaskerConfig(name="blur")
        self.settings = settings
        self._model = model

    def blur_map(self, image: np.ndarray) -> BlurMap:
        """The local blur map of an LR image (float32 HxWx3 RGB in [0, 1])."""
        from mkgan_engine.train.sampler import to_grey

        grey = to_grey(image)
        if self.config.blur_map == "reblur":
            return reblur_blur_map(grey, self.settings)
        if self._model is None:
            from mkgan_engine.train.kenet import load_kenet

            self._model = load_kenet(None, self.config.device)
        return kenet_blur_map(grey, self._model, self.settings)

    def __call__(self, image: np.ndarray) -> RegionMap:
        shape = image.shape[:2]
        if min(shape) < self.settings.window:
            return RegionMap.single(shape, self.name, f"image is {shape[1]}x{shape[0]} px, smaller than the "
                                                      f"{self.settings.window} px windows of the blur map: one kernel")
        blur_map = self.blur_map(image)
        crop = crop_side(self.config.region_area)
        labels, centroids = blur_regions(blur_map, shape, self.config.max_regions, crop, self.settings)
        maps = {"blur_sigma": blur_map.sigma_image(shape)}
        if len(centroids) == 1:
            region_map = RegionMap.single(shape, self.name, "the blur is alike everywhere (one cluster): one kernel")
        else:
            region_map = finalize(labels, self.config, self.name, names=_region_names(centroids))
        region_map.maps.update(maps)
        return region_map
