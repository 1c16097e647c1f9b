"""Region-aware crop sampling: crops come from inside the region (the Multi-KernelGAN fix)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mkgan_engine.train import rng, sampler
from mkgan_engine.train.crop_fit import MIN_INSIDE
from mkgan_engine.train.masked_crop import gather_crops


def _disc(shape: tuple[int, int], centre: tuple[float, float], area_fraction: float) -> np.ndarray:
    h, w = shape
    radius = np.sqrt(area_fraction * h * w / np.pi)
    rows, cols = np.indices(shape)
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2


def _draw(image: np.ndarray, mask: np.ndarray, crop_map: sampler.CropMap, n: int, seed: int = 0):
    """n crops of the image and of the mask from one map -> (mask crops (n, cs, cs), centres (n, 2))."""
    stacked = torch.from_numpy(np.concatenate([image, mask[..., None]], axis=2).transpose(2, 0, 1)[None].copy())
    cdf = sampler.build_cdfs([crop_map.prob])
    uniforms = rng.uniform(torch.tensor([seed]), rng.Stream.CROPS_G, 0, (n,))
    crops, centres = gather_crops(stacked.float(), cdf, uniforms, crop_map.crop_size)
    return crops[0, :, -1].numpy(), centres[0].numpy()


def test_crops_stay_inside_a_small_region(load_photo):
    image = load_photo("set14/baboon.png")  # 480x500
    mask = _disc(image.shape[:2], (170, 320), 0.10)
    assert 0.09 < mask.mean() < 0.11
    g_map, d_map = sampler.region_crop_maps(image, mask, 64, 26)
    for crop_map in (g_map, d_map):
        assert crop_map.note is None
        assert crop_map.min_coverage >= MIN_INSIDE
        assert np.isclose(crop_map.prob.sum(), 1.0) and crop_map.prob[~mask].sum() == 0
        mask_crops, centres = _draw(image, mask, crop_map, 3000)
        assert mask[centres[:, 0], centres[:, 1]].all(), "a crop centre left the region"
        coverage = mask_crops.reshape(len(mask_crops), -1).mean(axis=1)
        assert coverage.min() >= 0.9, f"a {crop_map.crop_size}px crop covers the region by {coverage.min():.1%}"
        # Crops spread over the region rather than one spot.
        assert len({tuple(c) for c in centres}) > 50
    print(f"\n64px crops: min coverage {g_map.min_coverage:.3f}; 26px: {d_map.min_coverage:.3f}")


def test_sampling_follows_gradients(load_photo):
    image = load_photo("set14/baboon.png")
    image = image.copy()
    image[:, :250] = image[:, :250].mean()  # left half flat, right half textured
    d_map = sampler.crop_probability_map(image, None, 26)
    assert d_map.prob[:, 260:].sum() > 0.95


def test_empty_region_raises(load_photo):
    image = load_photo("set14/baboon.png")
    with pytest.raises(ValueError, match="empty"):
        sampler.region_crop_maps(image, np.zeros(image.shape[:2], bool))
    from mkgan_engine.train.config import KernelGANConfig
    from mkgan_engine.train.kernelgan import estimate_kernel

    with pytest.raises(ValueError, match="empty"):
        estimate_kernel(image, np.zeros(image.shape[:2], bool), KernelGANConfig.preset("fast"))


def test_image_smaller_than_crop_raises():
    from mkgan_engine.train.config import KernelGANConfig
    from mkgan_engine.train.kernelgan import estimate_kernel

    with pytest.raises(ValueError, match="at least 64x64"):
        estimate_kernel(np.full((50, 80, 3), 0.5, np.float32), None, KernelGANConfig.preset("fast"))


def test_thin_region_falls_back_to_best_coverage(load_photo):
    image = load_photo("set14/baboon.png")
    mask = np.zeros(image.shape[:2], bool)
    mask[100:140, 50:450] = True  # 40 px tall: no 64-px crop can be 90% inside
    g_map = sampler.crop_probability_map(image, mask, 64, downscaled=True)
    assert g_map.note is not None and "maximal coverage" in g_map.note
    assert np.isclose(g_map.min_coverage, 40 / 64, atol=0.03)
    _, centres = _draw(image, mask, g_map, 500)
    assert mask[centres[:, 0], centres[:, 1]].all()


def test_flat_image_is_sampled_uniformly():
    image = np.full((100, 120, 3), 0.3, np.float32)
    d_map = sampler.crop_probability_map(image, None, 26)
    assert "uniform" in (d_map.note or "")
    values = d_map.prob[d_map.allowed]
    assert np.allclose(values, values[0])
    assert d_map.allowed.sum() == (100 - 26 + 1) * (120 - 26 + 1)


def test_members_of_different_sizes_never_draw_padding(load_photo):
    image = load_photo("set14/baboon.png")
    small, large = image[:90, :150], image[:300, :200]
    maps = [sampler.crop_probability_map(im, None, 64) for im in (small, large)]
    cdf = sampler.build_cdfs([m.prob for m in maps])
    assert cdf.shape == (2, 300 * 200) and torch.all(cdf[:, -1] == 1.0)
    uniforms = torch.cat([torch.zeros(2, 1), rng.uniform(torch.tensor([3, 4]), 2, 0, (4000,)), torch.full((2, 1), 1 - 2**-24)], 1)
    _, centres = gather_crops(torch.zeros(2, 1, 300, 200), cdf, uniforms, 64)
    for m, im in enumerate((small, large)):
        h, w = im.shape[:2]
        assert centres[m, :, 0].min() >= 32 and centres[m, :, 0].max() <= h - 32
        assert centres[m, :, 1].min() >= 32 and centres[m, :, 1].max() <= w - 32


def test_grey_is_the_packages_luma_for_every_channel_layout(load_photo):
    """sampler.to_grey (the raw-array entry of the crop maps and KENet): float64 luma of RGB with the
    package's BT.601 weights, alpha ignored, grey passed through."""
    from mkgan_engine.imageio import LUMA_WEIGHTS, luma

    rgb = load_photo("set5/bird.png")
    grey = sampler.to_grey(rgb)
    assert grey.dtype == np.float64 and grey.shape == rgb.shape[:2]
    assert np.array_equal(grey, rgb.astype(np.float64) @ np.array(LUMA_WEIGHTS))
    assert np.abs(grey - luma(rgb)).max() < 1e-6  # the maskers' float32 luma
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 0.25, np.float32)], axis=2)
    assert np.array_equal(sampler.to_grey(rgba), grey)
    assert np.array_equal(sampler.to_grey(grey), grey)
    assert np.array_equal(sampler.to_grey(grey[..., None]), grey)
    assert np.array_equal(sampler.to_grey(np.stack([grey, grey * 0], axis=2)), grey)  # grey + alpha
