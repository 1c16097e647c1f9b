"""User masks: one PNG per image that bypasses the masker."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from mkgan_engine.config import MaskerConfig
from mkgan_engine.maskers.user_mask import load_user_mask

H, W = 200, 240
CFG = MaskerConfig()


def write(path: Path, array: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), array)
    return path


def disc(value: int = 255, dtype=np.uint8, centre=(120, 100), radius=60) -> np.ndarray:
    m = np.zeros((H, W), dtype)
    cv2.circle(m, centre, radius, int(value), -1)
    return m


def test_binary_mask_is_respected_exactly(tmp_path):
    mask = disc()
    write(tmp_path / "img.png", mask)
    rmap = load_user_mask(tmp_path, "img", (H, W), CFG)
    assert rmap is not None and rmap.fallback_reason is None
    assert rmap.label_ids == [0, 1]
    assert [r.name for r in rmap.regions] == ["background", "object"]
    assert all(r.source == "user" for r in rmap.regions)
    # no closing / blocks: the user's pixels exactly
    assert (rmap.mask(1) == (mask > 0)).all()


def test_mask_suffix_name_wins(tmp_path):
    write(tmp_path / "img.png", np.zeros((H, W), np.uint8))  # e.g. the image itself
    write(tmp_path / "img_mask.png", disc())
    rmap = load_user_mask(tmp_path, "img", (H, W), CFG)
    assert rmap.label_ids == [0, 1]


def test_label_map_keeps_ids(tmp_path):
    lab = np.zeros((H, W), np.uint8)
    lab[:, 140:] = 200
    lab[20:120, 10:110] = 50
    lab[0, 0] = 7  # one stray pixel: below the minimum area -> background
    write(tmp_path / "scene_mask.png", lab)
    rmap = load_user_mask(tmp_path, "scene", (H, W), CFG)
    assert rmap.fallback_reason is None
    assert rmap.label_ids == [0, 50, 200]
    assert (rmap.mask(50) == (lab == 50)).all() and (rmap.mask(200) == (lab == 200)).all()
    assert rmap.labels[0, 0] == 0


def test_16bit_masks(tmp_path):
    write(tmp_path / "a.png", disc(65535, np.uint16))
    rmap = load_user_mask(tmp_path, "a", (H, W), CFG)
    assert rmap.label_ids == [0, 1] and cv2.imread(str(tmp_path / "a.png"), -1).dtype == np.uint16
    lab = np.zeros((H, W), np.uint16)
    lab[:, :100] = 1000
    lab[:, 170:] = 40000  # the background strip between is 70 px wide: room for a 64-px crop
    write(tmp_path / "b.png", lab)
    rmap = load_user_mask(tmp_path, "b", (H, W), CFG)
    assert rmap.label_ids == [0, 1000, 40000]


def test_rgb_mask_is_converted_to_grey(tmp_path):
    m = disc()
    write(tmp_path / "c.png", np.stack([m, m, m], axis=2))
    rmap = load_user_mask(tmp_path, "c", (H, W), CFG)
    assert (rmap.mask(1) == (m > 0)).all()
    red = np.zeros((H, W, 3), np.uint8)
    red[..., 2] = m  # BGR: a red disc on black
    write(tmp_path / "d.png", red)
    assert (load_user_mask(tmp_path, "d", (H, W), CFG).mask(1) == (m > 0)).all()


def test_wrong_size_is_a_clear_error(tmp_path):
    write(tmp_path / "img.png", np.zeros((100, 120), np.uint8))
    with pytest.raises(ValueError) as err:
        load_user_mask(tmp_path, "img", (H, W), CFG)
    assert "120x100" in str(err.value) and f"{W}x{H}" in str(err.value)


@pytest.mark.parametrize("value", [0, 255])
def test_empty_region_falls_back_to_one_region(tmp_path, value):
    write(tmp_path / "img.png", np.full((H, W), value, np.uint8))
    rmap = load_user_mask(tmp_path, "img", (H, W), CFG)
    assert len(rmap) == 1 and (rmap.labels == 0).all()
    assert rmap.fallback_reason.startswith("user mask has an empty region")


def test_small_user_object_falls_back(tmp_path):
    write(tmp_path / "img.png", disc(radius=10))
    rmap = load_user_mask(tmp_path, "img", (H, W), CFG)
    assert len(rmap) == 1 and "below the minimum 4096 px" in rmap.fallback_reason


def test_missing_file_or_folder_is_none(tmp_path):
    assert load_user_mask(tmp_path, "nothing", (H, W), CFG) is None
    assert load_user_mask(tmp_path / "no_such_dir", "img", (H, W), CFG) is None


def test_corrupt_file_is_an_error(tmp_path):
    (tmp_path / "img.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="not a readable image"):
        load_user_mask(tmp_path, "img", (H, W), CFG)


def test_mask_painted_as_transparency(tmp_path):
    m = disc()
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., 3] = m  # constant colour, the mask is in alpha
    write(tmp_path / "img_mask.png", rgba)
    rmap = load_user_mask(tmp_path, "img", (H, W), CFG)
    assert (rmap.mask(1) == (m > 0)).all()
