"""The library API: stages alone or together, bring-your-own mask/kernels, lazy heavy imports."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from mkgan_engine import Engine, EngineConfig, MaskerConfig, RegionInfo, RegionMap
from mkgan_engine.train.config import KernelGANConfig, ZSSRConfig
from mkgan_engine.metrics import psnr
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


def _save_png(path, rgb: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray((np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)).save(path)


def _three_images_with_two_regions(tmp_path, load_photo) -> tuple[list, str]:
    """Three PNGs of different sizes and a broken file between them; user masks with two regions
    each. Returns (the inputs in order, the mask folder)."""
    from PIL import Image

    masks = tmp_path / "masks"
    masks.mkdir()
    for i, (name, box) in enumerate([("set5/bird.png", (slice(0, 128), slice(0, 176))), ("set14/face.png", (slice(0, 112), slice(0, 160))),
                                     ("set5/butterfly.png", (slice(64, 192), slice(32, 192)))]):
        image = load_photo(name)[box]
        _save_png(tmp_path / f"{i}_{name.split('/')[1]}", image)
        labels = np.zeros(image.shape[:2], np.uint8)
        labels[:, 80:] = 255  # object on the right
        Image.fromarray(labels).save(masks / f"{i}_{name.split('/')[1]}")
    (tmp_path / "0b_broken.png").write_bytes(b"not a png")
    return sorted(tmp_path.glob("*.png")), str(masks)


@pytest.mark.slow
def test_packed_images_equal_each_image_alone(load_photo, tmp_path):
    """Cross-image packing in the batch runner: the regions of three images of different sizes
    train as one ZSSR member batch and every image gets exactly the kernels and SR pixels it gets
    alone; a bad file in the middle fails alone, in order. (KernelGAN's packing equals alone in
    float64: tests/test_kernelgan.py, images of different sizes in one batch.)"""
    from mkgan_engine.batch import run_batch

    inputs, masks = _three_images_with_two_regions(tmp_path, load_photo)
    engine = Engine(EngineConfig(scale=2, device="cpu", masker=MaskerConfig(name="none", mask_dir=masks), zssr=QUICK_ZSSR))
    alone = list(run_batch(engine, inputs, pack=1))
    packed = list(run_batch(engine, inputs, pack=3))
    assert [r.status for r in packed] == [r.status for r in alone] == ["ok", "failed", "ok", "ok"]
    assert [r.input for r in packed] == [str(p) for p in inputs]
    assert [len(r.regions) for r in packed if r.status == "ok"] == [2, 2, 2]
    for a, p in zip(alone, packed):
        if a.status == "ok":
            for ra, rp in zip(a.regions, p.regions):
                np.testing.assert_array_equal(ra.kernel, rp.kernel)
                assert ra.zssr == rp.zssr
            np.testing.assert_array_equal(a.sr, p.sr)


def test_a_pack_is_one_kernelgan_and_one_zssr_batch(load_photo, tmp_path, monkeypatch):
    """With --kernel-estimator kernelgan and a pack of 3, KernelGAN trains the 6 regions in one call
    and ZSSR the 6 members in one call; with a pixel budget that holds only the first two images,
    the third is a pack of its own."""
    import mkgan_engine.train.kernelgan as kernelgan
    import mkgan_engine.train.zssr as zssr
    from mkgan_engine.batch import run_batch

    inputs, masks = _three_images_with_two_regions(tmp_path, load_photo)
    calls: list[tuple[str, int]] = []

    def spy(name, real, count):
        def wrapper(*args, **kwargs):
            calls.append((name, count(args[0])))
            return real(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(kernelgan, "estimate_kernels", spy("kernelgan", kernelgan.estimate_kernels, len))
    monkeypatch.setattr(zssr, "run_zssr_many", spy("zssr", zssr.run_zssr_many, lambda jobs: sum(len(j.kernels) for j in jobs)))
    engine = Engine(EngineConfig(scale=2, device="cpu", masker=MaskerConfig(name="none", mask_dir=masks), kernel_estimator="kernelgan",
                                 kernelgan=QUICK_KG.with_(iterations=4), zssr=QUICK_ZSSR.with_(iterations=4, min_iterations=2)))
    results = list(run_batch(engine, inputs, pack=3))
    assert [r.status for r in results] == ["ok", "failed", "ok", "ok"]
    assert calls == [("kernelgan", 6), ("zssr", 6)]
    assert all(r.kernel.shape == (13, 13) and np.isfinite(r.kernel).all() for res in results if res.status == "ok" for r in res.regions)
    calls.clear()
    first_two = 128 * 176 + 112 * 160  # LR pixels of the first two images
    results = list(run_batch(engine, inputs, pack=3, pack_pixels=first_two))
    assert [r.status for r in results] == ["ok", "failed", "ok", "ok"]
    assert calls == [("kernelgan", 4), ("zssr", 4), ("kernelgan", 2), ("zssr", 2)]


def test_a_failing_pack_is_finished_image_by_image(load_photo, tmp_path, monkeypatch):
    """When the packed call raises, the runner finishes each image alone: the error lands on the
    image that causes it and the others succeed."""
    from mkgan_engine.batch import run_batch

    paths = [tmp_path / f"{i}.png" for i in range(3)]
    for path, name in zip(paths, ["set5/bird.png", "set14/face.png", "set5/baby.png"]):
        _save_png(path, load_photo(name)[:64, :64])
    engine = Engine(EngineConfig(scale=2, device="cpu", masker=MaskerConfig(name="none"),
                                 zssr=QUICK_ZSSR.with_(iterations=4, min_iterations=2)))
    real_finish_many = Engine.finish_many

    def finish_many(self, prepared, *args, **kwargs):
        if any(p.image.path.name == "1.png" for p in prepared):
            raise RuntimeError("this image cannot be trained")
        return real_finish_many(self, prepared, *args, **kwargs)

    monkeypatch.setattr(Engine, "finish_many", finish_many)  # Engine.finish is finish_many of one
    results = list(run_batch(engine, paths, pack=3))
    assert [r.status for r in results] == ["ok", "failed", "ok"]
    assert "this image cannot be trained" in results[1].error
