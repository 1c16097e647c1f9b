"""Configs are frozen; one ``resolved()`` step decides the defaults; library errors name no CLI flag."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mkgan_engine import Engine, EngineConfig, MaskerConfig, OutputConfig, RegionInfo, RegionMap
from mkgan_engine.train.config import KernelGANConfig, ZSSRConfig


def test_configs_are_frozen():
    for config in (EngineConfig(), MaskerConfig(), OutputConfig()):
        with pytest.raises(dataclasses.FrozenInstanceError):
            config.device = "cpu"  # type: ignore[misc]


def test_resolved_fills_the_defaults_once_and_leaves_the_original_alone():
    asked = EngineConfig(preset="paper", device="auto", masker=MaskerConfig(name="none", device="elsewhere"))
    config = asked.resolved()
    assert asked.kernelgan is None and asked.zssr is None and asked.device == "auto"
    assert asked.masker.device == "elsewhere"
    assert config.kernelgan == KernelGANConfig.preset("paper") and config.zssr == ZSSRConfig.preset("paper")
    assert config.device in ("cpu", "cuda") and config.masker.device == config.device
    assert config.resolved() == config
    given = KernelGANConfig.preset("fast").with_(iterations=7)
    assert EngineConfig(device="cpu", kernelgan=given).resolved().kernelgan is given


def test_the_engine_runs_on_the_resolved_copy():
    asked = EngineConfig(scale=2, preset="fast", device="cpu", masker=MaskerConfig(name="none"), kernel_estimator="kernelgan",
                         kernelgan=KernelGANConfig.preset("fast"), zssr=ZSSRConfig.preset("fast"))
    engine = Engine(asked)
    assert engine.config == asked.resolved() and str(engine.device) == "cpu"
    assert asked.masker.device == "cpu"  # default, not written by the engine


def test_a_device_error_names_the_device_not_a_flag():
    from mkgan_engine.device import DeviceError, resolve_device

    with pytest.raises(DeviceError) as caught:
        resolve_device("cuda:97")
    assert str(caught.value).startswith("cuda:97: ") and "--" not in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_the_cli_adds_the_flag_to_a_device_error(tmp_path):
    import cv2
    from typer.testing import CliRunner

    from mkgan_engine.cli import app

    photo = tmp_path / "p.png"
    cv2.imwrite(str(photo), np.zeros((80, 80, 3), np.uint8))
    result = CliRunner().invoke(app, ["sr", str(photo), "-o", str(tmp_path / "out"), "--device", "cuda:97", "--masker", "none"])
    assert result.exit_code == 2 and "--device cuda:97: " in result.output


def test_the_plan_derives_masks_and_seeds_once():
    from mkgan_engine.pipeline import InputError

    engine = Engine(EngineConfig(device="cpu", seed=3, scale=4, masker=MaskerConfig(name="none")))
    labels = np.zeros((70, 80), np.int32)
    labels[:, 40:] = 2
    plan = engine.plan(np.zeros((70, 80, 3), np.float32), RegionMap(labels, [RegionInfo(0, "a", "t"), RegionInfo(2, "b", "t")]))
    assert plan.kernel_seeds == (3000, 3001) and plan.zssr_seeds == (3500, 3501) and plan.scale == 4
    assert [m.sum() for m in plan.masks] == [70 * 40, 70 * 40] and plan.masks[1][0, 79]
    single = engine.plan(np.zeros((70, 80, 3), np.float32), RegionMap.single((70, 80)))
    assert single.masks == (None,) and single.kernel_seeds == (3000,) and single.zssr_seeds == (3500,)
    with pytest.raises(InputError, match="region map is"):
        engine.plan(np.zeros((70, 81, 3), np.float32), RegionMap(labels))


def test_the_masker_timings_travel_on_its_region_map():
    class TimedMasker:
        name = "timed"

        def __call__(self, image):
            region_map = RegionMap.single(image.shape)
            region_map.timings.update(detector=0.25, total=0.5)
            return region_map

    engine = Engine(EngineConfig(device="cpu", masker=MaskerConfig(name="none")))
    engine._masker = TimedMasker()
    prepared = engine.prepare(np.zeros((64, 64, 3), np.float32))
    assert prepared.timings["mask_detector"] == 0.25 and "mask_total" not in prepared.timings
    assert set(prepared.timings) == {"read", "mask", "mask_detector"}
