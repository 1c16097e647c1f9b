"""Feathered merge of per-region SR results (train/merge.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mkgan_engine.train.merge import default_radius, feather_weights, merge_regions


def _halves(h: int = 48, w: int = 64) -> np.ndarray:
    labels = np.zeros((h, w), np.int32)
    labels[:, w // 2:] = 1
    return labels


def _blob_labels(h: int = 60, w: int = 80) -> np.ndarray:
    """Three regions: background 0, an ellipse 1, a rectangle 2 (label 7 never occurs)."""
    yy, xx = np.mgrid[:h, :w]
    labels = np.zeros((h, w), np.int32)
    labels[((yy - 25) / 15.0) ** 2 + ((xx - 25) / 20.0) ** 2 < 1] = 1
    labels[35:55, 50:75] = 2
    return labels


def test_identical_images_merge_to_themselves(rng):
    labels = _blob_labels()
    image = rng.random((*labels.shape, 3), dtype=np.float32)
    merged = merge_regions([image, image.copy(), image.copy()], labels, [0, 1, 2], radius_px=6)
    assert merged.dtype == np.float32 and merged.shape == image.shape
    np.testing.assert_allclose(merged, image, rtol=0, atol=1e-6)


def test_weights_sum_to_one_and_match_hard_mask_far_from_boundaries():
    labels = _blob_labels()
    radius = 5.0
    weights = feather_weights(labels, [0, 1, 2, 7], radius)
    assert weights.shape == (4, *labels.shape) and weights.dtype == np.float32
    np.testing.assert_allclose(weights.sum(0), 1.0, atol=1e-6)
    assert (weights >= 0).all() and (weights <= 1).all()
    assert not weights[3].any()  # label 7 has no pixels: zero weight everywhere
    # Pixels farther than radius (+0.5) from any other region carry exactly the hard mask.
    from scipy import ndimage

    for index, label in enumerate([0, 1, 2]):
        mask = labels == label
        far = ndimage.distance_transform_edt(mask) > radius + 0.5
        assert far.any()
        assert (weights[index][far] == 1.0).all()
        others = np.delete(weights, index, axis=0)
        assert (others[:, far] == 0.0).all()
    # ... and the boundary is actually soft.
    boundary = np.abs(np.diff(labels, axis=1)) > 0
    assert ((weights[1][:, :-1][boundary] > 0.05) & (weights[1][:, :-1][boundary] < 0.95)).any()


def test_smooth_offset_leaves_no_step_at_the_boundary():
    h, w = 48, 64
    labels = _halves(h, w)
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    base = (0.3 + 0.2 * np.sin(xx / 9.0) * np.cos(yy / 7.0))[..., None].repeat(3, axis=2)
    offset = 0.25 + 0.05 * np.sin(yy / 11.0)[..., None]  # smooth offset between the two results
    region0, region1 = base, base + offset
    radius = 8.0
    soft = merge_regions([region0, region1], labels, [0, 1], radius_px=radius)
    hard = merge_regions([region0, region1], labels, [0, 1], radius_px=0)

    def max_step(img: np.ndarray) -> float:
        # largest difference between horizontally adjacent pixels, minus the image's own gradient
        return float(np.abs(np.diff(img - base, axis=1)).max())

    assert max_step(hard) >= 0.25 - 1e-6  # the full step shows with a hard mask
    assert max_step(soft) <= 0.75 / radius * offset.max() + 1e-5  # smoothstep slope bound
    assert max_step(soft) < 0.15 * offset.min()
    # far from the boundary each side keeps its own result exactly
    np.testing.assert_array_equal(soft[:, : w // 2 - 9], region0[:, : w // 2 - 9])
    np.testing.assert_array_equal(soft[:, w // 2 + 9:], region1[:, w // 2 + 9:])


def test_three_labels_and_an_empty_label(rng):
    labels = _blob_labels()
    images = [np.full((*labels.shape, 3), v, np.float32) for v in (0.1, 0.5, 0.9, 123.0)]
    merged = merge_regions(images, labels, [0, 1, 2, 7], radius_px=4)
    assert merged.min() >= 0.1 - 1e-6 and merged.max() <= 0.9 + 1e-6  # label 7's image is unused
    assert merged[5, 5, 0] == pytest.approx(0.1)
    assert merged[25, 25, 0] == pytest.approx(0.5)
    assert merged[45, 62, 0] == pytest.approx(0.9)
    # an absent region's image may also be None
    merged_none = merge_regions(images[:3] + [None], labels, [0, 1, 2, 7], radius_px=4)
    np.testing.assert_array_equal(merged, merged_none)


def test_unlisted_labels_go_to_the_nearest_listed_region():
    labels = _halves(20, 20)
    labels[:, 8:10] = 5  # not listed: split between its neighbours
    weights = feather_weights(labels, [0, 1], 0)
    assert (weights[0][:, :9] == 1).all() and (weights[1][:, 9:] == 1).all()
    np.testing.assert_allclose(weights.sum(0), 1.0)
    with pytest.raises(ValueError):
        feather_weights(labels, [3, 4], 2)


def test_torch_inputs_greyscale_and_defaults():
    labels = torch.from_numpy(_halves(32, 40))
    a = torch.zeros(32, 40)
    b = torch.ones(32, 40)
    merged = merge_regions([a, b], labels, [0, 1])
    assert isinstance(merged, np.ndarray) and merged.shape == (32, 40)
    assert merged[:, 0].max() == 0.0 and merged[:, -1].min() == 1.0
    assert np.all(np.diff(merged, axis=1) >= -1e-7)  # monotone ramp across the boundary
    assert default_radius((32, 40)) == 8.0
    assert default_radius((1356, 2040), scale=2) == pytest.approx(13.56)
    assert default_radius((100, 100), scale=4) == 16.0
    single = merge_regions([a + 0.5], np.zeros((32, 40), np.int32), [0])
    np.testing.assert_array_equal(single, a.numpy() + 0.5)
