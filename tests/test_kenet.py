"""KENet, the learned kernel estimator: shipped weights, recovery on a held-out photo, symmetries, inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mkgan_engine.train.config import KENetEstimatorConfig
from mkgan_engine.train.degradation import anisotropic_gaussian, degrade
from mkgan_engine.train.kenet import (
    CARD_FILE, WEIGHTS_FILE, Calibration, KENet, WeightsError, attention_loss, estimate_region_kernels, load_card,
    load_kenet, window_moments,
)
from mkgan_engine.train.kernel import kernel_error, kernel_moments

REPO = Path(__file__).resolve().parents[1]
WIDE = (4.0, 0.6, np.pi / 3)  # sigmas 2.00 / 0.77 px, axis at 60 deg
NARROW = (0.5, 0.5, 0.0)  # sigma 0.71 px


@pytest.fixture(scope="module")
def model() -> KENet:
    return load_kenet()


@pytest.fixture(scope="module")
def butterfly() -> np.ndarray:
    """Set5 butterfly (never seen in KENet's training), float32 256x256x3 in [0, 1]."""
    from mkgan_engine.imageio import read_image

    return read_image(REPO / "samples" / "hr" / "set5_butterfly.png").rgb


def _estimate(model: KENet, image: np.ndarray, mask: np.ndarray | None = None, **config) -> np.ndarray:
    return estimate_region_kernels(image, [mask], KENetEstimatorConfig(**config), model)[0].kernel


def test_shipped_weights_are_small_and_match_their_card():
    card = load_card()
    assert WEIGHTS_FILE.stat().st_size == card["bytes"] <= 8 * 1024 * 1024
    assert set(card["never_seen"]) == {"set5", "set14"}
    assert all(not entry.startswith(("set5", "set14")) for entry in card["training_data"])


def test_shipped_weights_reproduce_the_recorded_validation_score(model):
    card = load_card()
    batch = np.load(REPO / card["test_batch"])
    windows = torch.from_numpy(batch["windows"].astype(np.float32) / 255.0)
    with torch.inference_mode():
        estimates = model(windows).numpy()
    score = float(np.mean([kernel_error(e, t)["psnr"] for e, t in zip(estimates, batch["kernels"])]))
    assert score == pytest.approx(card["test_batch_kernel_psnr_db"], abs=0.05)
    # and the network is far better than not looking at the image (the mean kernel for every window)
    mean_kernel = batch["kernels"].mean(axis=0)
    blind = float(np.mean([kernel_error(mean_kernel, t)["psnr"] for t in batch["kernels"]]))
    assert score > blind + 3.0


def test_missing_or_corrupt_weights_are_a_clear_error(tmp_path):
    copy = tmp_path / "kenet_x2.pt"
    with pytest.raises(WeightsError, match="missing"):
        load_kenet(copy)
    shutil.copy(CARD_FILE, copy.with_suffix(".json"))
    with pytest.raises(WeightsError, match="missing"):
        load_kenet(copy)
    data = bytearray(WEIGHTS_FILE.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="corrupt"):
        load_kenet(copy)
    copy.write_bytes(WEIGHTS_FILE.read_bytes())
    assert isinstance(load_kenet(copy), KENet)


def test_the_cards_calibration_is_applied_and_a_bad_one_is_a_clear_error(model, tmp_path):
    assert model.calibration.cov_xy_gain == load_card()["calibration"]["cov_xy_gain"] > 1.0
    assert KENet().calibration == Calibration()  # a network built from a config is uncalibrated
    copy = tmp_path / "kenet_x2.pt"
    copy.write_bytes(WEIGHTS_FILE.read_bytes())
    card = load_card()
    card["calibration"] = {"cov_xy_gain": "steep"}
    copy.with_suffix(".json").write_text(json.dumps(card))
    with pytest.raises(WeightsError, match="calibration"):
        load_kenet(copy)


def test_the_calibration_scales_the_diagonal_moment_of_the_region_only(model, butterfly):
    lr = degrade(butterfly, anisotropic_gaussian(13, *WIDE, 2), 2)
    raw_model = load_kenet()
    raw_model.calibration = Calibration()
    grey, centres = lr.mean(axis=2), np.array([[40, 40], [64, 70], [90, 60]])
    np.testing.assert_array_equal(window_moments(model, grey, centres), window_moments(raw_model, grey, centres))
    calibrated = estimate_region_kernels(lr, [None], KENetEstimatorConfig(), model)[0].moments
    raw = estimate_region_kernels(lr, [None], KENetEstimatorConfig(), raw_model)[0].moments
    np.testing.assert_allclose(calibrated[:2], raw[:2], rtol=1e-12)
    np.testing.assert_allclose(calibrated[2], model.calibration.cov_xy_gain * raw[2], rtol=1e-12)
    assert raw[2] > 0.2  # the kernel's axis at 60 deg: a positive cov_xy is measured


def test_the_calibration_brings_a_diagonal_kernel_closer(model, butterfly):
    """Set5 butterfly (never trained on) blurred by the wide kernel turned to 135 deg, where the
    diagonal moment carries the elongation: the calibrated estimate is nearer the truth."""
    truth = anisotropic_gaussian(13, 4.0, 0.6, 3 * np.pi / 4, 2)
    lr = degrade(butterfly, truth, 2)
    raw_model = load_kenet()
    raw_model.calibration = Calibration()
    calibrated, raw = _estimate(model, lr), _estimate(raw_model, lr)
    print(f"kernel PSNR raw {kernel_error(raw, truth)['psnr']:.1f} dB, calibrated {kernel_error(calibrated, truth)['psnr']:.1f} dB")
    assert kernel_error(calibrated, truth)["psnr"] > kernel_error(raw, truth)["psnr"] + 1.0


def test_doctor_verifies_the_shipped_weights(tmp_path, monkeypatch):
    from mkgan_engine.doctor import _kenet_check
    from mkgan_engine.train import kenet

    check = _kenet_check()
    assert check.level == "ok" and load_card()["sha256"][:12] in check.detail
    data = bytearray(WEIGHTS_FILE.read_bytes())
    data[100] ^= 0xFF
    (tmp_path / "kenet_x2.pt").write_bytes(bytes(data))
    shutil.copy(CARD_FILE, tmp_path / "kenet_x2.json")
    monkeypatch.setattr(kenet, "WEIGHTS_FILE", tmp_path / "kenet_x2.pt")
    check = _kenet_check()
    assert check.level == "fail" and "corrupt" in check.detail


def test_wide_and_narrow_kernels_on_a_held_out_photo_are_ordered_and_the_axis_found(model, butterfly):
    wide = _estimate(model, degrade(butterfly, anisotropic_gaussian(13, *WIDE, 2), 2))
    narrow = _estimate(model, degrade(butterfly, anisotropic_gaussian(13, *NARROW, 2), 2))
    (wa, wb, wtheta), (na, nb, _) = kernel_moments(wide), kernel_moments(narrow)
    print(f"wide -> {wa:.2f}/{wb:.2f} px at {np.degrees(wtheta):.0f} deg; narrow -> {na:.2f}/{nb:.2f} px")
    assert wa * wb > 1.5 * na * nb
    assert wa > 1.3 * wb  # elongated
    assert abs((np.degrees(wtheta) - 60.0 + 90.0) % 180.0 - 90.0) < 20.0
    assert 0.45 < na < 1.1


def test_flipping_the_image_flips_the_kernel(model, butterfly):
    truth = anisotropic_gaussian(13, *WIDE, 2)
    lr = degrade(butterfly, truth, 2)
    kernel = _estimate(model, lr, dihedral=False)
    flipped = _estimate(model, np.ascontiguousarray(lr[:, ::-1]), dihedral=False)
    theta, theta_flipped = kernel_moments(kernel)[2], kernel_moments(flipped)[2]
    # a left-right flip maps an axis at theta to pi - theta
    assert abs((np.degrees(theta_flipped - (np.pi - theta)) + 90.0) % 180.0 - 90.0) < 10.0
    mirrored = np.roll(kernel[:, ::-1], 1, axis=1)  # the flip about the sf-aligned centre 6.5
    assert kernel_error(flipped, mirrored)["psnr"] > 35.0


def test_grey_and_rgba_inputs_give_the_rgb_kernel(model, butterfly):
    lr = degrade(butterfly, anisotropic_gaussian(13, *WIDE, 2), 2)
    rgb = _estimate(model, lr)
    grey = lr @ np.array([0.299, 0.587, 0.114], np.float32)
    rgba = np.concatenate([lr, np.full(lr.shape[:2] + (1,), 0.5, np.float32)], axis=2)
    assert kernel_error(_estimate(model, grey), rgb)["psnr"] > 60.0
    assert kernel_error(_estimate(model, rgba), rgb)["psnr"] > 60.0
    assert kernel_error(_estimate(model, np.repeat(grey[..., None], 3, axis=2)), rgb)["psnr"] > 60.0


def test_region_kernels_come_from_their_region(model, butterfly):
    """Left half blurred wide, right half narrow: each half's mask gives its own kernel."""
    wide = degrade(butterfly, anisotropic_gaussian(13, *WIDE, 2), 2)
    narrow = degrade(butterfly, anisotropic_gaussian(13, *NARROW, 2), 2)
    image = np.concatenate([wide[:, :64], narrow[:, 64:]], axis=1)
    left = np.zeros(image.shape[:2], bool)
    left[:, :64] = True
    results = estimate_region_kernels(image, [left, ~left], KENetEstimatorConfig(stride=8), model)
    areas = [np.prod(kernel_moments(r.kernel)[:2]) for r in results]
    assert areas[0] > 1.5 * areas[1]
    assert all(r.windows >= 4 and len(r.spread_px) == 2 for r in results)


def test_too_small_an_image_is_a_clear_error(model):
    with pytest.raises(ValueError, match="at least 64x64"):
        estimate_region_kernels(np.zeros((40, 80, 3), np.float32), [None], KENetEstimatorConfig(), model)


def test_a_flat_region_is_reported(model):
    image = np.full((96, 96, 3), 0.5, np.float32)
    result = estimate_region_kernels(image, [None], KENetEstimatorConfig(), model)[0]
    assert np.isclose(result.kernel.sum(), 1.0, atol=1e-5)
    assert any("flat" in note for note in result.notes)


def test_attention_loss_weights_the_kernel_core():
    truth = torch.from_numpy(anisotropic_gaussian(13, 1.0, 1.0, 0.0, 2))[None]
    core, tail = truth.clone(), truth.clone()
    core[0, 6, 6] += 0.01  # error at the peak
    tail[0, 0, 0] += 0.01  # the same error where the truth is ~0
    assert attention_loss(core, truth) > 10 * attention_loss(tail, truth)
    assert attention_loss(truth, truth) == 0


def test_the_hybrid_start_is_the_kenet_kernel():
    from mkgan_engine.train.generator import GaussianGenerator

    g = GaussianGenerator.create([0, 1], min_sigma=0.55)
    start = anisotropic_gaussian(13, 2.25, 0.64, 3 * np.pi / 4, 2)
    g.start_member_from(1, start)
    with torch.no_grad():
        kernel = g.kernel()[1].numpy()
    assert kernel_error(kernel, start)["psnr"] > 45.0


@pytest.mark.parametrize("estimator", ["kenet", "kernelgan", "hybrid"])
def test_the_estimator_choice_reaches_the_report(butterfly, estimator):
    from mkgan_engine import Engine, EngineConfig, MaskerConfig, RegionInfo, RegionMap
    from mkgan_engine.train.config import KernelGANConfig, ZSSRConfig

    lr = degrade(butterfly, anisotropic_gaussian(13, *WIDE, 2), 2)
    labels = np.zeros(lr.shape[:2], np.int32)
    labels[:, 64:] = 1
    region_map = RegionMap(labels, [RegionInfo(0, "left", "test"), RegionInfo(1, "right", "test")])
    config = EngineConfig(device="cpu", kernel_estimator=estimator, masker=MaskerConfig(name="none"),
                          kernelgan=KernelGANConfig.preset("fast").with_(iterations=20),
                          zssr=ZSSRConfig.preset("fast").with_(iterations=10, min_iterations=5))
    entry = Engine(config).run(lr, region_map=region_map).report_entry()
    assert [r["estimator"] for r in entry["regions"]] == [estimator, estimator]
    for region in entry["regions"]:
        assert region["status"] == "ok"
        if estimator == "kernelgan":
            assert region["confidence"] is None
        else:
            assert region["confidence"]["windows"] >= 1 and len(region["confidence"]["spread_px"]) == 2
