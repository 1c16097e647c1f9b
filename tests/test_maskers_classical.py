"""Classical maskers (fft / edges / gradient / none) and the shared post-processing, on real photos."""

from __future__ import annotations


import cv2
import numpy as np
import pytest

from mkgan_engine.config import MaskerConfig
from mkgan_engine.maskers import build_masker
from mkgan_engine.maskers.classical import EdgeMasker, FFTMasker, GradientMasker, WholeImageMasker
from mkgan_engine.maskers.postprocess import (
    blockify,
    block_size,
    enforce_min_area,
    finalize,
    remove_small_islands,
)
from mkgan_engine.regions import RegionMap

SIZE = 256


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum()) / float((a | b).sum())


def ellipse(shape=(SIZE, SIZE), centre=(140, 120), axes=(80, 60), angle=20) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    cv2.ellipse(m, centre, axes, angle, 0, 360, 1, -1)
    return m.astype(bool)


def scene(load_photo, obj: str, bg: str, sigma: float = 6.0) -> tuple[np.ndarray, np.ndarray]:
    """A sharp textured crop of ``obj`` inside an ellipse over a strongly blurred ``bg``."""
    o = load_photo(obj)[:SIZE, :SIZE]
    b = cv2.resize(load_photo(bg), (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    b = cv2.GaussianBlur(b, (0, 0), sigma)
    truth = ellipse()
    return np.where(truth[..., None], o, b).astype(np.float32), truth


# ------------------------------------------------------------------------------------ maskers
SCENES = [("set14/baboon.png", "set14/pepper.png"), ("urban100/img_001.png", "set14/face.png")]


@pytest.mark.parametrize("obj,bg", SCENES)
def test_fft_masker_finds_the_sharp_textured_object(load_photo, obj, bg):
    image, truth = scene(load_photo, obj, bg)
    cfg = MaskerConfig(name="fft")
    ious = {}
    for cls in (FFTMasker, EdgeMasker, GradientMasker):
        rmap = cls(cfg)(image)
        assert rmap.shape == truth.shape and rmap.labels.dtype == np.int32
        assert rmap.fallback_reason is None, rmap.fallback_reason
        assert rmap.label_ids == [0, 1]
        assert [r.name for r in rmap.regions] == ["background", "object"]
        assert all(r.source == cls.name for r in rmap.regions)
        assert abs(sum(r.area_fraction for r in rmap.regions) - 1.0) < 1e-6
        ious[cls.name] = iou(rmap.mask(1), truth)
    print(f"\nIoU with the true object ({obj} on blurred {bg}): "
          + ", ".join(f"{k}={v:.3f}" for k, v in ious.items()))
    assert ious["fft"] >= 0.8
    assert ious["edges"] >= 0.5
    assert ious["gradient"] >= 0.5


def test_registry_builds_the_classical_maskers(load_photo):
    image = load_photo("set14/baboon.png")
    for name, cls in [("fft", FFTMasker), ("edges", EdgeMasker), ("gradient", GradientMasker), ("none", WholeImageMasker)]:
        masker = build_masker(MaskerConfig(name=name))
        assert isinstance(masker, cls) and masker.name == name
        rmap = masker(image)
        assert isinstance(rmap, RegionMap) and rmap.shape == image.shape[:2]
    from mkgan_engine.maskers.blur import BlurMasker

    assert isinstance(build_masker(MaskerConfig()), BlurMasker)  # "auto" without weights: regions that follow the blur


def test_whole_image_masker_is_one_region(load_photo):
    image = load_photo("set5/bird.png")
    rmap = WholeImageMasker(MaskerConfig(name="none"))(image)
    assert len(rmap) == 1 and rmap.fallback_reason is None
    assert (rmap.labels == 0).all() and rmap.regions[0].source == "none"


@pytest.mark.parametrize("cls", [FFTMasker, EdgeMasker, GradientMasker])
def test_flat_image_detects_nothing(cls):
    image = np.full((128, 160, 3), 0.4, np.float32)
    rmap = cls(MaskerConfig())(image)
    assert len(rmap) == 1 and (rmap.labels == 0).all()
    assert "nothing detected" in rmap.fallback_reason


# ------------------------------------------------------------------------------ post-processing
def test_closing_and_largest_component():
    truth = ellipse()
    raw = truth.copy()
    raw[130:136, :] = False  # a gap through the object: closing bridges it
    raw[100:104, 110:114] = False  # a small hole
    raw[5:40, 5:40] = True  # a separate island: not the largest component -> background
    cfg = MaskerConfig(blocky_factor=0)  # no blocks: check the cleaning alone
    rmap = finalize(raw, cfg, "test")
    obj = rmap.mask(1)
    assert not obj[5:40, 5:40].any()
    assert obj[100:104, 110:114].all()
    assert obj[130:136, 120].all()
    assert iou(obj, truth) > 0.97


def test_blocky_mask_is_constant_on_blocks_and_aligns_with_hr():
    cfg = MaskerConfig()
    b = block_size(cfg.blocky_factor)
    assert b == 7
    shape = (250, 253)  # not multiples of the block: partial last blocks
    rmap = finalize(ellipse(shape), cfg, "test")
    lab = rmap.labels
    assert len(rmap) == 2
    for y in range(0, shape[0], b):
        for x in range(0, shape[1], b):
            block = lab[y:y + b, x:x + b]
            assert (block == block[0, 0]).all()
    hr = rmap.upscale(2)
    assert hr.shape == (500, 506)
    assert (hr[::2, ::2] == lab).all() and (hr[1::2, 1::2] == lab).all()
    # blockify alone: idempotent, keeps labels
    again = blockify(lab, cfg.blocky_factor)
    assert (again == lab).all()


def test_tiny_object_is_merged_away_with_a_reason():
    raw = np.zeros((SIZE, SIZE), bool)
    raw[100:130, 100:130] = True  # 900 px < 4096
    rmap = finalize(raw, MaskerConfig(), "fft")
    assert len(rmap) == 1 and (rmap.labels == 0).all()
    assert "object region of" in rmap.fallback_reason
    assert "below the minimum 4096 px for 64x64 crops" in rmap.fallback_reason
    assert rmap.regions[0].source == "fft"


def test_thin_object_cannot_hold_a_crop():
    raw = np.zeros((SIZE, SIZE), bool)
    raw[100:120, :] = True  # 5120 px >= 4096 but only 20 px tall
    rmap = finalize(raw, MaskerConfig(blocky_factor=0), "test")
    assert len(rmap) == 1
    assert "no 64x64 window" in rmap.fallback_reason


def test_small_background_goes_to_the_object():
    raw = np.ones((SIZE, SIZE), bool)
    raw[:20, :20] = False  # 400 px of background
    rmap = finalize(raw, MaskerConfig(blocky_factor=0), "test", clean=False)
    assert len(rmap) == 1
    assert rmap.fallback_reason.startswith("background region of 400 px is below the minimum")


def test_nothing_detected():
    rmap = finalize(np.zeros((SIZE, SIZE), bool), MaskerConfig(), "test")
    assert len(rmap) == 1 and rmap.fallback_reason == "nothing detected"


def test_three_labels_flow_through_with_their_ids_names_and_scores():
    lab = np.zeros((SIZE, SIZE), np.int32)
    lab[:, 128:] = 7  # right half
    lab[20:110, 20:110] = 3  # a square on the left
    lab[200:205, 10:15] = 9  # a speck: merged into background
    names = {3: "person", 7: "building", 9: "cat"}
    scores = {3: 0.9, 7: 0.6, 9: 0.55}
    rmap = finalize(lab, MaskerConfig(), "yolo-sam", names=names, scores=scores)
    assert rmap.fallback_reason is None
    assert rmap.label_ids == [0, 3, 7]
    assert [r.name for r in rmap.regions] == ["background", "person", "building"]
    assert [r.score for r in rmap.regions] == [None, 0.9, 0.6]
    assert set(np.unique(rmap.labels)) == {0, 3, 7}
    assert iou(rmap.mask(3), lab == 3) > 0.9 and iou(rmap.mask(7), lab == 7) > 0.95


def test_background_merged_into_nearest_of_several_objects():
    lab = np.full((SIZE, SIZE), 2, np.int32)
    lab[:, 130:] = 5
    lab[:, 126:130] = 0  # a thin background strip between the two objects
    out, messages = enforce_min_area(lab, 4096)
    assert set(np.unique(out)) == {2, 5}
    assert (out[:, :128] == 2).all() and (out[:, 128:] == 5).all()
    assert len(messages) == 1 and messages[0].startswith("background region of 1024 px")
    rmap = finalize(lab, MaskerConfig(blocky_factor=0), "test", clean=False)
    assert rmap.label_ids == [2, 5] and rmap.fallback_reason is None


def test_remove_small_islands_and_bad_inputs():
    m = ellipse()
    m[0:3, 0:3] = True
    m[120:123, 120:123] = False
    cleaned = remove_small_islands(m, 50)
    assert not cleaned[0:3, 0:3].any() and cleaned[120:123, 120:123].all()
    with pytest.raises(ValueError):
        finalize(np.zeros((4, 4, 3), bool), MaskerConfig(), "test")
    with pytest.raises(ValueError):
        finalize(np.full((8, 8), -1), MaskerConfig(), "test")
    with pytest.raises(ValueError):
        finalize(np.zeros((8, 8), np.float32), MaskerConfig(), "test")


def test_masker_grey_is_the_packages_luma_in_0_255():
    """The maskers' grey is imageio.luma * 255, float32, bit for bit the arithmetic they were tuned
    on (BT.601 weights applied in float32, R then G then B)."""
    from mkgan_engine.imageio import luma
    from mkgan_engine.maskers.classical import _grey

    rng = np.random.default_rng(0)
    image = rng.random((64, 80, 3), dtype=np.float32)
    grey = _grey(image)
    assert grey.dtype == np.float32 and grey.flags.c_contiguous
    expected = (image[..., 0] * np.float32(0.299) + image[..., 1] * np.float32(0.587)
                + image[..., 2] * np.float32(0.114)) * np.float32(255.0)
    assert np.array_equal(grey, expected)
    assert np.array_equal(grey, luma(image) * np.float32(255.0))
    with pytest.raises(ValueError, match="x3 RGB"):
        luma(image[..., :2])
