"""SR kernel utilities: post-processing, the analytic x4 kernel, files, comparison, moments.

Kernels are float32 2-D arrays (KxK) of non-negative weights summing to 1, applied by correlation
followed by subsampling (see :mod:`degradation`). "sf-aligned centre": for a KxK kernel at scale s
the centre of mass that keeps an s-times subsampled image aligned with the HR grid,
``K // 2 + 0.5 * (s - K % 2)`` (6.5 for 13x13 at x2).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from scipy import io as scipy_io
from scipy import ndimage


def sf_center(kernel_size: int, scale: int) -> float:
    """Wanted centre of mass (row = col) of a kernel_size^2 kernel at integer scale."""
    return kernel_size // 2 + 0.5 * (scale - kernel_size % 2)


def center_of_mass(kernel: np.ndarray) -> np.ndarray:
    """(row, col) centre of mass of a non-negative kernel, in pixels."""
    return np.asarray(ndimage.center_of_mass(np.clip(kernel, 0, None)), dtype=np.float64)


def shift_to_center(kernel: np.ndarray, scale: int) -> np.ndarray:
    """Sub-pixel shift (cubic spline) so the centre of mass is the sf-aligned centre; renormalised."""
    wanted = sf_center(kernel.shape[0], scale)
    shift = wanted - center_of_mass(kernel)
    shifted = np.clip(ndimage.shift(kernel.astype(np.float64), shift, order=3, mode="constant"), 0, None)
    return (shifted / max(shifted.sum(), 1e-12)).astype(np.float32)


def keep_largest(kernel: np.ndarray, keep: int = 40) -> np.ndarray:
    """Zero all but about the `keep` largest taps: subtract 0.75x the (keep+1)-th largest, clip, renormalise."""
    flat = np.sort(kernel.ravel())
    threshold = 0.75 * flat[-keep - 1] if keep < flat.size else 0.0
    cleaned = np.clip(kernel - threshold, 0, None)
    return (cleaned / max(cleaned.sum(), 1e-12)).astype(np.float32)


def finalize_kernel(kernel: np.ndarray, scale: int = 2, keep: int = 40) -> np.ndarray:
    """Raw generator kernel -> saved kernel: keep the largest taps, then shift to the sf-aligned centre."""
    return shift_to_center(keep_largest(kernel, keep), scale)


def analytic_x4(kernel_x2: np.ndarray) -> np.ndarray:
    """x4 kernel from an x2 kernel k: k convolved with itself dilated by 2, cropped by K//2, normalised.

    KxK -> (3K-2-2*(K//2))^2, e.g. 13x13 -> 25x25.
    """
    k = kernel_x2.astype(np.float64)
    size = k.shape[0]
    big = np.zeros((3 * size - 2, 3 * size - 2))
    for r in range(size):
        for c in range(size):
            big[2 * r : 2 * r + size, 2 * c : 2 * c + size] += k[r, c] * k
    crop = size // 2
    cropped = big[crop:-crop, crop:-crop]
    return (cropped / cropped.sum()).astype(np.float32)


def save_kernel(path: str | os.PathLike[str], kernel: np.ndarray) -> None:
    """Write ``.mat`` (key ``Kernel``, read by ZSSR/SRMD/USRNet tools) or ``.npy`` by the suffix, atomically."""
    from mkgan_engine.imageio import write_bytes_atomic

    path = Path(path)
    buffer = io.BytesIO()
    if path.suffix == ".mat":
        scipy_io.savemat(buffer, {"Kernel": np.asarray(kernel, np.float64)})
    elif path.suffix == ".npy":
        np.save(buffer, np.asarray(kernel, np.float32))
    else:
        raise ValueError(f"kernel files are .mat or .npy, got {path.name}")
    write_bytes_atomic(path, buffer.getvalue())


def load_kernel(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a kernel from ``.npy`` or ``.mat`` (key ``Kernel``, else the only 2-D array); float32, sum 1."""
    path = Path(path)
    if path.suffix == ".npy":
        kernel = np.load(path)
    elif path.suffix == ".mat":
        data = {k: v for k, v in scipy_io.loadmat(path).items() if not k.startswith("__")}
        if "Kernel" in data:
            kernel = data["Kernel"]
        else:
            arrays = [v for v in data.values() if isinstance(v, np.ndarray) and v.ndim == 2]
            if len(arrays) != 1:
                raise ValueError(f"{path}: no 'Kernel' key and {len(arrays)} 2-D arrays")
            kernel = arrays[0]
    else:
        raise ValueError(f"kernel files are .mat or .npy, got {path.name}")
    kernel = np.asarray(kernel, np.float32)
    if kernel.ndim != 2 or kernel.sum() <= 0:
        raise ValueError(f"{path}: not a 2-D kernel with positive sum")
    return kernel / kernel.sum()


def _centred_on_canvas(kernel: np.ndarray, size: int) -> np.ndarray:
    """Place a kernel on a size x size canvas with its centre of mass at the canvas centre."""
    canvas = np.zeros((size, size), np.float64)
    kh, kw = kernel.shape
    top, left = (size - kh) // 2, (size - kw) // 2
    canvas[top : top + kh, left : left + kw] = kernel
    shift = (size - 1) / 2.0 - center_of_mass(canvas)
    moved = np.clip(ndimage.shift(canvas, shift, order=3, mode="constant"), 0, None)
    return moved / max(moved.sum(), 1e-12)


def kernel_error(estimate: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Compare kernels after normalising and aligning centres of mass on a common canvas.

    Returns {"l1": sum |e - t| in [0, 2], "psnr": 10 log10(max(t)^2 / MSE) in dB}.
    """
    size = max(estimate.shape + truth.shape) + 4
    e, t = _centred_on_canvas(estimate, size), _centred_on_canvas(truth, size)
    mse = float(np.mean((e - t) ** 2))
    return {"l1": float(np.abs(e - t).sum()), "psnr": float(10 * np.log10(t.max() ** 2 / max(mse, 1e-20)))}


def kernel_covariance(kernel: np.ndarray) -> tuple[float, float, float]:
    """(var_x, var_y, cov_xy) in px^2 of a kernel's (negative taps clipped, normalised) weights about
    its centre of mass; x is the column, y the row axis."""
    k = np.clip(kernel.astype(np.float64), 0, None)
    k = k / k.sum()
    rows, cols = np.indices(k.shape)
    cy, cx = (k * rows).sum(), (k * cols).sum()
    dy, dx = rows - cy, cols - cx
    return float((k * dx * dx).sum()), float((k * dy * dy).sum()), float((k * dx * dy).sum())


def kernel_moments(kernel: np.ndarray) -> tuple[float, float, float]:
    """(sigma_major, sigma_minor, theta): square roots of the covariance's eigenvalues in pixels and
    the major axis' angle in radians in [0, pi), measured from the +x (column) axis towards +y (rows)."""
    var_x, var_y, cov_xy = kernel_covariance(kernel)
    values, vectors = np.linalg.eigh(np.array([[var_x, cov_xy], [cov_xy, var_y]]))
    major = vectors[:, 1]
    theta = float(np.arctan2(major[1], major[0]) % np.pi)
    return float(np.sqrt(max(values[1], 0))), float(np.sqrt(max(values[0], 0))), theta
