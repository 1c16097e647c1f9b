"""Kernel utilities: post-processing, analytic x4, .mat/.npy files, comparison."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import io as scipy_io

from mkgan_engine.train.degradation import anisotropic_gaussian, blur_downsample
from mkgan_engine.train.kernel import (
    analytic_x4,
    center_of_mass,
    finalize_kernel,
    kernel_error,
    kernel_moments,
    load_kernel,
    save_kernel,
    sf_center,
)


def test_mat_and_npy_round_trip_with_the_kernel_key(tmp_path):
    kernel = anisotropic_gaussian(13, 3.0, 0.8, 0.7, 2)
    save_kernel(tmp_path / "k.mat", kernel)
    save_kernel(tmp_path / "k.npy", kernel)
    raw = scipy_io.loadmat(tmp_path / "k.mat")
    assert raw["Kernel"].shape == (13, 13)  # the key ZSSR / SRMD / USRNet read
    np.testing.assert_allclose(load_kernel(tmp_path / "k.mat"), kernel, atol=1e-7)
    np.testing.assert_allclose(load_kernel(tmp_path / "k.npy"), kernel, atol=1e-7)
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave no temporary file
    with pytest.raises(ValueError, match=".mat or .npy"):
        save_kernel(tmp_path / "k.txt", kernel)


def test_finalize_keeps_the_largest_taps_and_centres_at_the_sf_aligned_centre():
    rng = np.random.default_rng(0)
    shifted = np.roll(anisotropic_gaussian(13, 1.5, 0.7, 0.3, 2), (1, -2), axis=(0, 1))
    raw = shifted + 0.002 * rng.standard_normal((13, 13)).astype(np.float32)
    out = finalize_kernel(raw, scale=2, keep=40)
    assert out.min() >= 0 and out.sum() == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(center_of_mass(out), [sf_center(13, 2)] * 2, atol=0.05)
    assert (out > 1e-3).sum() <= 50  # noise taps were zeroed (the sub-pixel shift smears a little)
    assert kernel_error(out, shifted)["psnr"] > 30


def test_analytic_x4_equals_two_x2_degradations():
    k2 = anisotropic_gaussian(13, 2.0, 0.6, 1.0, 2)
    k4 = analytic_x4(k2)
    assert k4.shape == (25, 25) and k4.sum() == pytest.approx(1.0, abs=1e-5)
    hr = torch.rand(1, 1, 96, 96, dtype=torch.float64)
    twice = blur_downsample(blur_downsample(hr, torch.from_numpy(k2)[None].double(), 2), torch.from_numpy(k2)[None].double(), 2)
    once = blur_downsample(hr, torch.from_numpy(k4)[None].double(), 4)
    # Away from the zero-padded borders the two agree up to the taps dropped by the crop.
    inner = (slice(None), slice(None), slice(6, -6), slice(6, -6))
    np.testing.assert_allclose(once[inner].numpy(), twice[inner].numpy(), atol=2e-3)


def test_kernel_error_and_moments():
    wide = anisotropic_gaussian(13, 4.0, 0.5, np.pi / 3, 2)
    assert kernel_error(wide, wide)["l1"] == pytest.approx(0.0, abs=1e-6)
    # Alignment: a shifted copy scores as well as the original.
    assert kernel_error(np.roll(wide, 1, axis=1), wide)["psnr"] > 40
    assert kernel_error(anisotropic_gaussian(13, 0.5, 0.5, 0.0, 2), wide)["l1"] > 0.5
    major, minor, theta = kernel_moments(wide)
    assert major == pytest.approx(2.0, abs=0.1) and minor == pytest.approx(0.71, abs=0.1)
    assert theta == pytest.approx(np.pi / 3, abs=0.05)
