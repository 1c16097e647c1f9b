"""The one crop-fit rule (train/crop_fit.py): its steps, and that the masker and the trainers agree.

The masker keeps a region only when KernelGAN's crop fits it by the trainers' rule without a
fallback, so the trainers (KernelGAN's generator and discriminator crops, KENet's windows, ZSSR's
fathers of the fast preset) never fall back on a masker's region.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from mkgan_engine.config import MaskerConfig
from mkgan_engine.maskers.classical import EdgeMasker, FFTMasker, GradientMasker
from mkgan_engine.maskers.postprocess import finalize
from mkgan_engine.regions import RegionMap
from mkgan_engine.train import sampler, zssr_data
from mkgan_engine.train.config import KernelGANConfig, ZSSRConfig
from mkgan_engine.train.crop_fit import BEST_TOLERANCE, MIN_INSIDE, crop_coverage, fit_centres, holds_crop
from mkgan_engine.train.generator import output_size


def _brute_coverage(mask: np.ndarray, cs: int, y: int, x: int) -> float:
    y0, x0 = y - cs // 2, x - cs // 2
    return float(mask[y0 : y0 + cs, x0 : x0 + cs].mean())


# ------------------------------------------------------------------------------------ the rule
def test_coverage_is_the_exact_share_of_the_crop_in_the_region():
    rng = np.random.default_rng(0)
    mask = rng.random((40, 50)) < 0.4
    for cs in (1, 6, 7, 16):
        cov = crop_coverage(mask, cs)
        half = cs // 2
        for y in range(40):
            for x in range(50):
                fits = y - half >= 0 and x - half >= 0 and y - half + cs <= 40 and x - half + cs <= 50
                assert np.isfinite(cov[y, x]) == fits
                if fits:
                    assert cov[y, x] == _brute_coverage(mask, cs, y, x)
    assert np.isnan(crop_coverage(mask, 41)).all()  # the crop leaves the image everywhere


def test_inside_centres_are_in_the_region_and_90_percent_covered():
    mask = np.zeros((120, 140), bool)
    cv2.circle(mask.view(np.uint8), (70, 60), 45, 1, -1)
    mask[58:62, 66:74] = False  # a small hole: its centres are not in the region
    fit = fit_centres(mask, 32)
    assert fit.rule == "inside" and fit.note is None and fit.min_coverage >= MIN_INSIDE
    cov = crop_coverage(mask, 32)
    expected = mask & np.isfinite(cov) & (np.nan_to_num(cov) >= MIN_INSIDE - 1e-9)
    assert (fit.allowed == expected).all() and fit.allowed.sum() > 100
    assert not fit.allowed[~mask].any()
    assert holds_crop(mask, 32)


def test_fallback_chain():
    h, w, cs = 96, 120, 32
    # A strip too thin for a 90 %-inside crop: in-region centres of (nearly) the best coverage.
    strip = np.zeros((h, w), bool)
    strip[40:60, :] = True
    fit = fit_centres(strip, cs)
    assert fit.rule == "centre" and np.isclose(fit.best, 20 / 32)
    assert fit.allowed.any() and strip[fit.allowed].all()
    assert fit.min_coverage >= fit.best - BEST_TOLERANCE - 1e-12
    assert "maximal coverage 62%" in fit.note and "inside the region" in fit.note
    assert not holds_crop(strip, cs)
    assert fit_centres(strip, cs, fallback=False).rule == "none"
    assert not fit_centres(strip, cs, fallback=False).allowed.any()
    # A sliver at the border (no in-region centre's crop fits): the crops covering most of it.
    sliver = np.zeros((h, w), bool)
    sliver[:3, :5] = True
    fit = fit_centres(sliver, cs)
    assert fit.rule == "cover" and fit.allowed.any()
    cov = crop_coverage(sliver, cs)
    assert (cov[fit.allowed] > 0).all() and np.isclose(cov[fit.allowed].max(), 15 / cs**2)
    assert "no in-region centre fits" in fit.note
    # Nothing: an empty region, or an image smaller than the crop.
    assert fit_centres(np.zeros((h, w), bool), cs).rule == "none"
    assert fit_centres(np.ones((20, 20), bool), cs).rule == "none"


def test_the_trainers_use_the_rule():
    mask = np.zeros((96, 120), bool)
    mask[10:80, 20:100] = True
    mask[40:60, 100:] = True
    strip = np.zeros((96, 120), bool)
    strip[30:70, :] = True  # 40 px: "inside" for 26-px crops, "centre" for 48 and 64
    sliver = np.zeros((96, 120), bool)
    sliver[-4:, -6:] = True  # "cover"
    for m in (mask, strip, sliver):
        for cs in (26, 48, 64):
            fit = fit_centres(m, cs)
            allowed, min_cov, note = sampler.allowed_centres(m, cs)
            assert (allowed == fit.allowed).all() and min_cov == fit.min_coverage and note == fit.note
            prob, rule = zssr_data.region_centre_map(m, m.shape, cs)
            assert (prob.astype(bool) == fit.allowed).all() and rule == fit.rule
    prob, rule = zssr_data.region_centre_map(None, (96, 120), 48)  # no mask: every centre that fits
    assert rule == "inside" and prob.sum() == (96 - 47) * (120 - 47)
    with pytest.raises(ValueError, match="at least 64x64"):
        sampler.allowed_centres(np.ones((50, 80), bool), 64)
    with pytest.raises(ValueError, match="empty"):
        sampler.allowed_centres(np.zeros((80, 80), bool), 64)


# ------------------------------------------------------------- the masker and the trainers agree
KGAN = KernelGANConfig.preset("fast")
ZSSR_FAST = ZSSRConfig.preset("fast")
KENET_WINDOW = 64
TRAINER_CROPS = {
    "KernelGAN generator": KGAN.crop_size,
    "KernelGAN discriminator": output_size(KGAN.crop_size, KGAN.g_kernel_sizes),
    "KENet window": KENET_WINDOW,
    "ZSSR father (fast)": ZSSR_FAST.crop_size,
}


def _assert_trainers_need_no_fallback(image: np.ndarray, rmap: RegionMap, what: str) -> int:
    """Every region of a multi-region map gives every trainer crops without a fallback; returns
    the number of regions checked."""
    if len(rmap) == 1:
        return 0
    for lab in rmap.label_ids:
        mask = rmap.mask(lab)
        g_map, d_map = sampler.region_crop_maps(image, mask, KGAN.crop_size, TRAINER_CROPS["KernelGAN discriminator"])
        assert g_map.note is None and d_map.note is None, f"{what} region {lab}: {g_map.note or d_map.note}"
        for name, cs in TRAINER_CROPS.items():
            fit = fit_centres(mask, cs)
            assert fit.rule == "inside", f"{what} region {lab}: {name} ({cs} px) falls back: {fit.note}"
        _, rule = zssr_data.region_centre_map(mask, mask.shape, ZSSR_FAST.crop_size, ZSSR_FAST.region_min_inside)
        assert rule == "inside"
    return len(rmap)


def test_masker_crop_is_kernelgans_crop_and_covers_the_trainers():
    cfg = MaskerConfig()
    assert cfg.min_region_area is None and cfg.region_area == KGAN.crop_size**2
    assert max(TRAINER_CROPS.values()) == KGAN.crop_size  # the masker checks the largest crop
    assert ZSSR_FAST.region_min_inside == MIN_INSIDE  # and the trainers' threshold


@pytest.mark.parametrize("name", ["set14/baboon.png", "set5/bird.png", "set5_butterfly.png", "urban100/img_001.png"])
def test_classical_masker_regions_never_make_the_trainers_fall_back(load_photo, name):
    image = load_photo(name)
    for cls in (FFTMasker, EdgeMasker, GradientMasker):
        rmap = cls(MaskerConfig(name=cls.name))(image)
        _assert_trainers_need_no_fallback(image, rmap, f"{name} {cls.name}")


def test_kept_shapes_never_make_the_trainers_fall_back():
    """Strips, discs, L-shapes and random blobs through the masker's post-processing (blocky and as
    user masks): whatever is kept as a region gives every trainer crops without a fallback."""
    rng = np.random.default_rng(1)
    shape = (200, 240)
    image = rng.random((*shape, 3)).astype(np.float32)
    checked = 0
    cases: list[np.ndarray] = []
    for width in range(40, 100, 6):  # vertical strips around the 64-px limit
        lab = np.zeros(shape, np.int32)
        lab[:, 80 : 80 + width] = 1
        cases.append(lab)
    for radius in range(30, 70, 4):  # discs, also at the border
        for centre in ((120, 100), (radius // 2, 40)):
            m = np.zeros(shape, np.uint8)
            cv2.circle(m, centre[::-1], radius, 1, -1)
            cases.append(m.astype(np.int32))
    for t in (30, 50, 70):  # L-shapes of arm thickness t
        lab = np.zeros(shape, np.int32)
        lab[20:180, 20 : 20 + t] = 1
        lab[180 - t : 180, 20:200] = 1
        cases.append(lab)
    for _ in range(12):  # random blobs, two object labels
        noise = cv2.GaussianBlur(rng.random(shape).astype(np.float32), (0, 0), 12)
        lab = np.zeros(shape, np.int32)
        lab[noise > np.quantile(noise, 0.75)] = 1
        lab[noise < np.quantile(noise, 0.2)] = 2
        cases.append(lab)
    for lab in cases:
        for kwargs in ({}, {"clean": False, "blocky": False}):
            rmap = finalize(lab, MaskerConfig(), "test", **kwargs)
            checked += _assert_trainers_need_no_fallback(image, rmap, "shape")
    assert checked > 40  # many shapes were kept, so the check means something


def test_a_region_the_trainers_fall_back_on_is_not_kept():
    """A 50-px strip: a 64-px crop is at most 78 % inside it (the old 50 % rule let it through,
    and KernelGAN then fell back); the masker merges it."""
    lab = np.zeros((200, 240), np.int32)
    lab[:, 100:150] = 1
    assert not holds_crop(lab == 1, 64) and fit_centres(lab == 1, 64).rule == "centre"
    rmap = finalize(lab, MaskerConfig(), "test", clean=False, blocky=False)
    assert len(rmap) == 1
    assert "has no 64x64 window centred in it that is 90% inside it" in rmap.fallback_reason
