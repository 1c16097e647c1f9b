"""The library API: stages alone or together, bring-your-own mask/kernels, lazy heavy imports."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from mkgan_engine import Engine, EngineConfig, MaskerConfig, RegionInfo, RegionMap
from mkgan_engine.train.config import KernelGANConfig, ZSSRConfig
from mkgan_engine.train.degradation import anisotropic_gaussian

QUICK_KG = KernelGANConfig.preset("fast").with_(iterations=30)
QUICK_ZSSR = ZSSRConfig.preset("fast").with_(iterations=30, min_iterations=10)


def quick_engine(masker: str = "fft", scale: int = 2) -> Engine:
    return Engine(EngineConfig(scale=scale, device="cpu", masker=MaskerConfig(name=masker), kernelgan=QUICK_KG, zssr=QUICK_ZSSR))


def test_import_and_cli_do_not_load_heavy_modules():
    code = ("import sys, mkgan_engine, mkgan_engine.cli; "
            "heavy = [m for m in ('torch', 'ultralytics', 'segment_anything', 'onnxruntime', 'tensorrt', 'cv2') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
def test_run_with_two_regions(load_photo):
    lr = load_photo("set5/bird.png")[::2, ::2][:128, :128].copy()
    labels = np.zeros(lr.shape[:2], np.int32)
    labels[:, 64:] = 1
    region_map = RegionMap(labels, [RegionInfo(0, "left", "test"), RegionInfo(1, "right", "test")])
    result = quick_engine().run(lr, ground_truth=None, region_map=region_map)
    assert result.sr.shape == (256, 256, 3) and result.sr.dtype == np.float32
    assert 0.0 <= result.sr.min() and result.sr.max() <= 1.0
    assert [r.label for r in result.regions] == [0, 1]
    for region in result.regions:
        assert region.kernel.shape == (13, 13) and abs(region.kernel.sum() - 1) < 1e-4
        assert 0 < region.zssr["iterations"] <= QUICK_ZSSR.iterations and region.zssr["final_lr"] > 0  # per-member ZSSR
    assert {"kernels", "zssr", "merge"} <= set(result.timings)


@pytest.mark.slow
def test_bring_your_own_kernel_skips_estimation_and_scores(load_photo):
    hr = load_photo("set5/butterfly.png")[:128, :128]
    lr = hr[::2, ::2].copy()
    kernel = anisotropic_gaussian(13, 1.0, 1.0, 0.0, 2)
    result = quick_engine(scale=2).run(lr, ground_truth=hr, region_map=RegionMap.single(lr.shape), kernels=[kernel])
    assert "kernels" not in result.timings
    np.testing.assert_array_equal(result.regions[0].kernel, kernel)
    assert set(result.metrics) == {"psnr_y", "ssim_y", "psnr_rgb", "mse"} and result.metrics["psnr_y"] > 15


def test_too_small_image_is_a_clear_error():
    from mkgan_engine.pipeline import InputError

    with pytest.raises(InputError, match="at least 64x64"):
        quick_engine().run(np.zeros((40, 100, 3), np.float32))


def test_mismatched_kernels_are_rejected():
    from mkgan_engine.pipeline import InputError

    labels = np.zeros((80, 80), np.int32)
    labels[40:] = 1
    with pytest.raises(InputError, match="1 kernels for 2 regions"):
        quick_engine().run(np.zeros((80, 80, 3), np.float32), region_map=RegionMap(labels), kernels=[np.ones((3, 3))])


def test_progress_inside_an_image_reports_zssr_iterations_and_tiles(load_photo):
    lr = load_photo("set5/bird.png")[::2, ::2][:96, :96].copy()
    calls: list[tuple[str, int, int]] = []
    config = EngineConfig(device="cpu", masker=MaskerConfig(name="none"), zssr=QUICK_ZSSR.with_(tile=40))
    Engine(config, on_progress=lambda stage, done, total: calls.append((stage, done, total))).run(lr)
    train = [(d, t) for stage, d, t in calls if stage == "zssr train"]
    tiles = [(d, t) for stage, d, t in calls if stage == "zssr tiles"]
    assert len(train) + len(tiles) == len(calls) and train and all(t == QUICK_ZSSR.iterations for _, t in train)
    done = [d for d, _ in train]
    assert done == sorted(done) and 0 < done[0] <= done[-1] <= QUICK_ZSSR.iterations
    assert tiles == [(i, 9) for i in range(1, 10)]  # 96 px in 40-px tiles: 3 x 3, reported one by one
