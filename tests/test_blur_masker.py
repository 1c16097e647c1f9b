"""The blur masker: regions that follow the blur, K chosen per image, N > 2 regions end to end."""

from __future__ import annotations

import numpy as np
import pytest

from mkgan_engine.config import MaskerConfig
from mkgan_engine.maskers import build_masker
from mkgan_engine.maskers.blur import BlurMap, blur_features, log_covariance
from mkgan_engine.train.degradation import anisotropic_gaussian, degrade
from mkgan_engine.train.kernel import shift_to_center

SHARP, MEDIUM, WIDE = 0.4, 1.8, 4.5  # kernel variances, HR px^2


def dead_leaves(side: int, seed: int = 0, count: int = 3000) -> np.ndarray:
    """float32 side x side x 3 grey dead-leaves texture (random discs, power-law radii): edges and
    flat patches at every scale, like a natural photo."""
    rng = np.random.default_rng(seed)
    image = np.full((side, side), 0.5, np.float32)
    rows, cols = np.mgrid[:side, :side]
    for _ in range(count):
        radius = side * 0.1 * rng.uniform(0.05, 1) ** 2 + 1.5
        cy, cx = rng.uniform(0, side, 2)
        image[(rows - cy) ** 2 + (cols - cx) ** 2 <= radius * radius] = rng.uniform(0, 1)
    return np.repeat(image[..., None], 3, axis=2)


def blurred(variance: float, hr: np.ndarray) -> np.ndarray:
    return degrade(hr, shift_to_center(anisotropic_gaussian(11, variance, variance, 0.0, 2), 2), 2)


@pytest.fixture(scope="module")
def lr_levels() -> dict[float, np.ndarray]:
    hr = dead_leaves(448)
    return {v: blurred(v, hr) for v in (SHARP, MEDIUM, WIDE)}


@pytest.fixture(scope="module")
def masker():
    return build_masker(MaskerConfig(name="blur", min_region_area=48 * 48))


def best_iou(labels: np.ndarray, truth: np.ndarray, true_label: int) -> float:
    target = truth == true_label
    return max(np.count_nonzero((labels == p) & target) / np.count_nonzero((labels == p) | target)
               for p in np.unique(labels))


def test_two_halves_give_two_regions(masker, lr_levels):
    image = lr_levels[SHARP].copy()
    w = image.shape[1]
    image[:, w // 2 :] = lr_levels[WIDE][:, w // 2 :]
    truth = np.zeros(image.shape[:2], int)
    truth[:, w // 2 :] = 1
    region_map = masker(image)
    assert len(region_map) == 2, region_map.fallback_reason
    assert min(best_iou(region_map.labels, truth, t) for t in (0, 1)) >= 0.9
    names = {r.name.split()[0] for r in region_map.regions}
    assert names == {"sharper", "blurrier"}
    sigma = region_map.maps["blur_sigma"]
    assert sigma.shape == image.shape[:2]
    assert np.median(sigma[:, w // 2 :]) > 1.5 * np.median(sigma[:, : w // 2])  # the heat map sees the blur


def test_three_bands_give_three_regions(masker, lr_levels):
    image = lr_levels[SHARP].copy()
    h = image.shape[0]
    image[h // 3 : 2 * h // 3] = lr_levels[MEDIUM][h // 3 : 2 * h // 3]
    image[2 * h // 3 :] = lr_levels[WIDE][2 * h // 3 :]
    truth = np.zeros(image.shape[:2], int)
    truth[h // 3 : 2 * h // 3] = 1
    truth[2 * h // 3 :] = 2
    region_map = masker(image)
    assert len(region_map) == 3, region_map.fallback_reason
    assert [round(best_iou(region_map.labels, truth, t), 3) >= 0.85 for t in (0, 1, 2)] == [True] * 3
    assert np.mean([best_iou(region_map.labels, truth, t) for t in (0, 1, 2)]) >= 0.9


def test_uniform_blur_gives_one_region(masker, lr_levels):
    region_map = masker(lr_levels[MEDIUM])
    assert len(region_map) == 1
    assert "alike everywhere" in region_map.fallback_reason


def test_max_regions_caps_k(lr_levels):
    image = lr_levels[SHARP].copy()
    h = image.shape[0]
    image[h // 3 : 2 * h // 3] = lr_levels[MEDIUM][h // 3 : 2 * h // 3]
    image[2 * h // 3 :] = lr_levels[WIDE][2 * h // 3 :]
    assert len(build_masker(MaskerConfig(name="blur", max_regions=2, min_region_area=48 * 48))(image)) == 2
    assert len(build_masker(MaskerConfig(name="blur", max_regions=1, min_region_area=48 * 48))(image)) == 1


def test_image_smaller_than_the_windows_is_one_region_with_a_reason(masker):
    region_map = masker(np.random.default_rng(0).random((24, 40, 3)).astype(np.float32))
    assert len(region_map) == 1
    assert "smaller than the 32 px windows" in region_map.fallback_reason


def test_small_image_cannot_split_and_says_why(masker, lr_levels):
    """A 60x60 image with two blurs: neither half holds a 48-px crop, so one kernel, with the reason."""
    image = lr_levels[SHARP][:60, :60].copy()
    image[:, 30:] = lr_levels[WIDE][:60, 30:60]
    region_map = masker(image)
    assert len(region_map) == 1
    assert region_map.fallback_reason


def test_reblur_map_sees_the_blur_without_weights(lr_levels):
    image = lr_levels[SHARP].copy()
    w = image.shape[1]
    image[:, w // 2 :] = lr_levels[WIDE][:, w // 2 :]
    masker = build_masker(MaskerConfig(name="blur", blur_map="reblur", min_region_area=48 * 48))
    blur_map = masker.blur_map(image)
    assert blur_map.source == "reblur"
    sigma = blur_map.sigma_image(image.shape[:2])
    assert np.median(sigma[:, w // 2 + 40 :]) > 1.3 * np.median(sigma[:, : w // 2 - 40])


def test_log_euclidean_features():
    iso = np.array([[2.0, 2.0, 0.0], [4.0, 4.0, 0.0]])
    logs = log_covariance(iso)
    assert np.allclose(logs[:, 2], 0) and np.allclose(logs[:, 0], np.log([2.0, 4.0]))
    feats = blur_features(iso, shape_weight=0.5)
    assert np.linalg.norm(feats[0] - feats[1]) == pytest.approx(np.sqrt(2) * np.log(2))  # sqrt2 |log ratio|
    rotated = blur_features(np.array([[3.0, 1.0, 0.0], [1.0, 3.0, 0.0]]), shape_weight=0.5)
    assert rotated[0, 0] == pytest.approx(rotated[1, 0])  # same size, opposite elongation


def test_blur_map_fills_flat_windows():
    moments = np.full((3, 3, 3), [2.0, 2.0, 0.0])
    moments[1, 1] = [50.0, 50.0, 0.0]  # a flat window's meaningless estimate
    valid = np.ones((3, 3), bool)
    valid[1, 1] = False
    blur_map = BlurMap(np.array([16, 24, 32]), np.array([16, 24, 32]), moments, valid, "kenet")
    assert np.allclose(blur_map.features(0.0), blur_features(np.array([2.0, 2.0, 0.0])))


@pytest.mark.slow
def test_three_regions_end_to_end_from_a_user_label_map(tmp_path, lr_levels):
    """A 3-label user mask (values 0/1/2) through KENet, ZSSR (three members) and the merge; the
    region kernels follow the three blurs."""
    from mkgan_engine import Engine, EngineConfig
    from mkgan_engine.imageio import write_image
    from mkgan_engine.train.config import ZSSRConfig
    from mkgan_engine.train.kernel import kernel_moments

    image = lr_levels[SHARP].copy()
    h = image.shape[0]
    image[h // 3 : 2 * h // 3] = lr_levels[MEDIUM][h // 3 : 2 * h // 3]
    image[2 * h // 3 :] = lr_levels[WIDE][2 * h // 3 :]
    labels = np.zeros(image.shape[:2], np.uint8)
    labels[h // 3 : 2 * h // 3] = 1
    labels[2 * h // 3 :] = 2
    write_image(tmp_path / "bands.png", labels)
    write_image(tmp_path / "photo.png", (image[..., ::-1] * 255).round().astype(np.uint8))
    config = EngineConfig(device="cpu", masker=MaskerConfig(name="blur", mask_dir=tmp_path / "masks"),
                          zssr=ZSSRConfig.preset("fast").with_(iterations=10, min_iterations=5, ensemble=1))
    (tmp_path / "masks").mkdir()
    (tmp_path / "bands.png").rename(tmp_path / "masks" / "photo.png")
    result = Engine(config).run(tmp_path / "photo.png")
    assert [r.label for r in result.regions] == [0, 1, 2]
    assert result.sr.shape == (2 * image.shape[0], 2 * image.shape[1], 3)
    sigmas = [kernel_moments(r.kernel)[0] for r in result.regions]
    assert sigmas[0] < sigmas[1] < sigmas[2], sigmas
    assert len(result.report_entry()["regions"]) == 3


@pytest.mark.slow
def test_blur_masker_end_to_end_gives_ordered_kernels(lr_levels):
    from mkgan_engine import Engine, EngineConfig
    from mkgan_engine.train.config import ZSSRConfig
    from mkgan_engine.train.kernel import kernel_moments

    image = lr_levels[SHARP].copy()
    w = image.shape[1]
    image[:, w // 2 :] = lr_levels[WIDE][:, w // 2 :]
    config = EngineConfig(device="cpu", masker=MaskerConfig(name="blur"),
                          zssr=ZSSRConfig.preset("fast").with_(iterations=10, min_iterations=5, ensemble=1))
    result = Engine(config).run(image)
    assert len(result.regions) == 2
    by_name = {r.name.split()[0]: kernel_moments(r.kernel)[0] for r in result.regions}
    assert by_name["sharper"] < by_name["blurrier"]
    assert result.region_map.maps["blur_sigma"].shape == image.shape[:2]


def test_preview_shows_the_blur_map_beside_regions_and_kernels():
    from mkgan_engine.imageio import LoadedImage
    from mkgan_engine.pipeline import RegionResult, Result
    from mkgan_engine.preview import render_preview
    from mkgan_engine.regions import RegionMap

    labels = np.zeros((64, 80), np.int32)
    labels[:, 40:] = 1
    kernel = np.full((13, 13), 1 / 169, np.float32)
    regions = [RegionResult(i, f"r{i}", "blur", 0.5, kernel) for i in (0, 1)]

    def picture(maps: dict) -> np.ndarray:
        region_map = RegionMap(labels.copy(), maps=maps)
        return render_preview(Result(input=None, image=LoadedImage(np.zeros((64, 80, 3), np.float32)),
                                     region_map=region_map, regions=regions))

    sigma = np.where(labels == 1, 2.0, 0.5).astype(np.float32)
    with_map, without = picture({"blur_sigma": sigma}), picture({})
    assert with_map.shape[1] == without.shape[1] + 80 + 4 and with_map.shape[0] == 64
    heat = with_map[32:, :80].astype(int)  # below the legend: blue on the sharp side, red on the blurred side
    assert heat[:, 10, 0] .mean() > heat[:, 10, 2].mean() and heat[:, 70, 2].mean() > heat[:, 70, 0].mean()


def test_the_preview_of_a_big_photo_is_bounded():
    from mkgan_engine.imageio import LoadedImage
    from mkgan_engine.pipeline import RegionResult, Result
    from mkgan_engine.preview import PREVIEW_MAX_SIDE, render_preview
    from mkgan_engine.regions import RegionMap

    labels = np.zeros((700, 3000), np.int32)
    labels[:, 1500:] = 1
    regions = [RegionResult(i, f"r{i}", "blur", 0.5, np.full((13, 13), 1 / 169, np.float32)) for i in (0, 1)]
    region_map = RegionMap(labels, maps={"blur_sigma": np.where(labels == 1, 2.0, 0.5).astype(np.float32)})
    picture = render_preview(Result(input=None, image=LoadedImage(np.zeros((700, 3000, 3), np.float32)),
                                    region_map=region_map, regions=regions))
    height = round(700 * PREVIEW_MAX_SIDE / 3000)
    assert picture.shape[0] == height and picture.shape[1] <= 2 * PREVIEW_MAX_SIDE + 4 + 13 * 12 + 8  # map | regions | kernels


def test_engine_shares_its_kenet_with_the_blur_masker():
    from mkgan_engine import Engine, EngineConfig

    engine = Engine(EngineConfig(device="cpu"))
    assert engine.masker.name == "blur" and engine.masker._model is engine.kenet_model


@pytest.mark.slow
def test_one_blur_region_is_exactly_one_kernel(lr_levels):
    """K = 1 (uniform blur) gives the same kernel and the same SR bytes as `--masker none`."""
    from mkgan_engine import Engine, EngineConfig
    from mkgan_engine.train.config import ZSSRConfig

    image = np.ascontiguousarray(lr_levels[MEDIUM][:96, :96])
    zssr = ZSSRConfig.preset("fast").with_(iterations=8, min_iterations=4, ensemble=1)
    results = [Engine(EngineConfig(device="cpu", masker=MaskerConfig(name=name), zssr=zssr)).run(image)
               for name in ("blur", "none")]
    assert len(results[0].regions) == 1
    np.testing.assert_array_equal(results[0].regions[0].kernel, results[1].regions[0].kernel)
    np.testing.assert_array_equal(results[0].sr, results[1].sr)
