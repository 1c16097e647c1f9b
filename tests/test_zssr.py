"""ZSSR with a given kernel (train/zssr*.py): quality vs bicubic, batched == single, region sampling,
x4, greyscale. Training tests are marked slow (they still run in CI) and are sized for one CPU core."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mkgan_engine.metrics import psnr
from mkgan_engine.train.config import ENSEMBLE_SIZES, ZSSRConfig
from mkgan_engine.train.degradation import anisotropic_gaussian, blur_downsample, degrade
from mkgan_engine.train.kernel import analytic_x4
from mkgan_engine.train.masked_crop import centres_from_uniforms
from mkgan_engine.train.zssr import Joiner, ZSSRJob, align_kernels, run_zssr, run_zssr_many, train_members, train_pool
from mkgan_engine.train.zssr_data import (
    build_father_canvas,
    dihedral,
    dihedral_inverse,
    dihedral_permutations,
    father_levels,
    region_centre_map,
    sample_fathers,
)
from mkgan_engine.train.zssr_inference import (
    needed_tiles,
    tile_side,
    upscale_tiles,
    upscale_window,
    window_bytes,
    window_halo,
)
from mkgan_engine.train.zssr_net import MemberConvNet


def _bicubic(lr: np.ndarray, scale: int) -> np.ndarray:
    x = torch.from_numpy(np.ascontiguousarray(np.atleast_3d(lr).transpose(2, 0, 1)))[None]
    up = F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1)
    out = up[0].numpy().transpose(1, 2, 0)
    return out[..., 0] if lr.ndim == 2 else out


def _tiny(**changes) -> ZSSRConfig:
    """A few dozen iterations on small crops: for behaviour, not quality."""
    base = dict(
        iterations=36, crop_size=24, lr_policy_every=8, lr_policy_window=8, min_iterations=8, rec_every=2,
        lr_slope_ratio=2.0,
    )
    base.update(changes)
    return ZSSRConfig.preset("fast").with_(**base)


# ------------------------------------------------------------------------------------------------
# Fast unit checks (no training)
# ------------------------------------------------------------------------------------------------
def test_dihedral_permutations_match_tensor_ops():
    x = torch.arange(36.0).reshape(6, 6)
    perms = dihedral_permutations(6, torch.device("cpu"))
    for t in range(8):
        assert torch.equal(x.reshape(-1)[perms[t]].reshape(6, 6), dihedral(x, t))
        assert torch.equal(dihedral_inverse(dihedral(x, t), t), x)
    assert len({tuple(p.tolist()) for p in perms}) == 8


@pytest.mark.parametrize("grouped", [None, True])  # None: the CPU member loop; True: the CUDA path
def test_batched_net_equals_members(grouped):
    net = MemberConvNet.initialise([3, 11], in_channels=3, channels=8, depth=8)
    net.grouped = grouped
    x = torch.rand(2, 3, 40, 52)
    net.requires_grad_(True)
    both = net(x)
    grads = torch.autograd.grad(both.square().sum(), net.parameters())
    for i in range(2):
        single = net.select([i]).requires_grad_(True)
        alone = single(x[i : i + 1])
        torch.testing.assert_close(both[i : i + 1], alone, rtol=1e-5, atol=1e-5)
        grads1 = torch.autograd.grad(alone.square().sum(), single.parameters())
        for g, g1 in zip(grads, grads1):
            torch.testing.assert_close(g[i : i + 1], g1, rtol=1e-4, atol=1e-4)
    # Initialisation is a function of the member's seed only.
    torch.testing.assert_close(MemberConvNet.initialise([11], 3, 8, 8).weights[0][0], net.weights[0][1])


@pytest.mark.parametrize("ensemble", ENSEMBLE_SIZES)
def test_tiles_with_their_halo_equal_one_whole_pass(ensemble):
    """Tiles on a 17-px grid (so tile edges fall everywhere: odd sizes, image borders, tiles thinner
    than the halo) give the whole-image SR of a trained-looking member: no seam, nothing to feather."""
    config = ZSSRConfig.preset("fast").with_(ensemble=ensemble)
    net = MemberConvNet.initialise([5], in_channels=3, channels=8, depth=8)
    net.weights[-1] *= 10.0  # a residual as strong as a trained net's, not the near-identity start
    kernel = torch.from_numpy(anisotropic_gaussian(13, 3.0, 1.0, 0.5, 2))[None]
    lr = torch.rand(1, 3, 45, 58)
    whole = upscale_window(net, lr, kernel, 2, config)
    halo = window_halo(config, 13, 2)
    tiles = needed_tiles(None, (45, 58), 17)
    assert len(tiles) == 3 * 4
    tiled = upscale_tiles(lambda b: upscale_window(net, lr[..., b[0] : b[1], b[2] : b[3]], kernel, 2, config),
                          torch.zeros_like(whole), tiles, (45, 58), halo, 2)
    torch.testing.assert_close(tiled, whole, rtol=0, atol=2e-5)
    short = upscale_tiles(lambda b: upscale_window(net, lr[..., b[0] : b[1], b[2] : b[3]], kernel, 2, config),
                          torch.zeros_like(whole), tiles, (45, 58), 2, 2)
    assert (short - whole).abs().max() > 1e-2  # the halo is needed: 2 px of it show the seams


def test_only_the_tiles_a_region_needs_run_and_the_tile_fits_the_budget():
    need = np.zeros((100, 130), bool)
    need[10:20, 95:105] = True
    assert needed_tiles(need, need.shape, 32) == [(0, 32, 64, 96), (0, 32, 96, 128)]
    config = ZSSRConfig.preset("fast")
    small, large = (tile_side(config.with_(max_memory_mb=mb), 2, 20) for mb in (256, 1024))
    assert 32 <= small < large
    for mb, side in ((256, small), (1024, large)):
        assert window_bytes(side + 40, 2, config) <= mb * 2**20 < window_bytes(side + 42, 2, config)
    assert tile_side(config.with_(tile=77), 2, 20) == 77


def test_align_kernels_keeps_the_degradation():
    k11 = anisotropic_gaussian(11, 2.0, 1.0, 0.3, 2)
    k13 = anisotropic_gaussian(13, 1.0, 3.0, 1.0, 2)
    x = torch.rand(1, 3, 30, 30)
    padded = align_kernels([k11, k13])
    assert padded.shape == (2, 13, 13)
    direct = blur_downsample(x, torch.from_numpy(k11)[None], 2)
    torch.testing.assert_close(blur_downsample(x, padded[:1], 2), direct, rtol=1e-5, atol=1e-6)


def test_region_crops_come_from_the_region():
    """Per-region sampling: every admissible centre (all pyramid levels) has >= 90 % of its crop in
    the region, sampled centres land only there, and the gathered fathers of an image that *is* the
    mask are (almost) all region; small regions fall back to centres inside the region."""
    h, w, cs = 96, 120, 32
    yy, xx = np.mgrid[:h, :w]
    region = ((yy - 60) / 30.0) ** 2 + ((xx - 40) / 36.0) ** 2 < 1.0
    image = torch.from_numpy(region.astype(np.float32))[None, None].expand(1, 3, h, w)
    config = ZSSRConfig.preset("fast")
    canvas = build_father_canvas(father_levels(image, [region], config), cs, 0.9)
    assert canvas.rules == ["inside"] and len(canvas.blocks[0]) == 3  # scale jitter levels are used
    # Admissible centres: the fraction of the crop inside the (canvas) region map.
    half = cs // 2
    ys, xs = np.nonzero(canvas.centres[0])
    assert ys.size > 50
    for y, x in zip(ys, xs):
        assert canvas.regions[0, y - half : y - half + cs, x - half : x - half + cs].mean() >= 0.9 - 1e-6
    # Sampled centres (the inverse-CDF the crop op uses) all lie on admissible centres, on every level.
    u = torch.rand(1, 4000, generator=torch.Generator().manual_seed(0))
    centres = centres_from_uniforms(canvas.cdf, u, canvas.images.shape[-1])[0].numpy()
    assert canvas.centres[0][centres[:, 0], centres[:, 1]].all()
    level_of = np.searchsorted([b[0] for b in canvas.blocks[0]], centres[:, 1], side="right") - 1
    assert set(level_of.tolist()) == {0, 1, 2}
    # Gathered fathers (with flips/rotations) of the mask image: >= ~90 % region each.
    perms = dihedral_permutations(cs, torch.device("cpu"))
    seeds = torch.tensor([5])
    for step in range(1, 40):
        fathers, _ = sample_fathers(canvas, seeds, step, 4, perms)
        assert fathers.mean(dim=(2, 3, 4)).min() >= 0.85
    # region_share 0.5: half the crops from the region's admissible centres, half from anywhere.
    mixed = build_father_canvas(father_levels(image, [region], config), cs, 0.9, region_share=0.5)
    torch.testing.assert_close(mixed.cdf[:, -1], torch.ones(1))
    centres = centres_from_uniforms(mixed.cdf, u, mixed.images.shape[-1])[0].numpy()
    in_region = canvas.centres[0][centres[:, 0], centres[:, 1]] > 0
    admissible = canvas.centres[0].sum() / float((mixed.centres[0] > 0).sum())
    assert in_region.mean() == pytest.approx(0.5 + 0.5 * admissible, abs=0.03)
    with pytest.raises(ValueError, match="region_share"):
        build_father_canvas(father_levels(image, [region], config), cs, 0.9, region_share=1.5)
    # A region too small for a 90 %-inside crop: centres inside the region.
    small = np.zeros((h, w), bool)
    small[10:22, 70:84] = True
    prob, rule = region_centre_map(small, (h, w), cs, 0.9)
    assert rule == "centre" and prob.sum() > 0 and small[prob > 0].all()
    # A sliver at the border: the crops covering the most of it.
    sliver = np.zeros((h, w), bool)
    sliver[:3, :5] = True
    prob, rule = region_centre_map(sliver, (h, w), cs, 0.9)
    assert rule == "cover" and prob.sum() > 0


# ------------------------------------------------------------------------------------------------
# Training tests
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_x2_beats_bicubic_with_the_true_kernel(load_photo):
    hr = load_photo("set14/zebra.png")[40:232, 100:292]  # 192x192 HR -> 96x96 LR
    kernel = anisotropic_gaussian(13, 2.5, 1.0, 0.6, 2)
    lr = degrade(hr, kernel, 2)
    result = run_zssr(lr, [kernel], 2, ZSSRConfig.preset("fast"), seeds=[0])
    sr = result.images[0]
    assert sr.shape == hr.shape and sr.dtype == np.float32
    p_bic = psnr(_bicubic(lr, 2), hr, shave=2, y=True)
    p_zssr = psnr(sr, hr, shave=2, y=True)
    info = result.members[0].stages[0]
    print(
        f"\nx2 Y-PSNR bicubic {p_bic:.2f} dB, ZSSR {p_zssr:.2f} dB; {info.iterations} it, final lr {info.final_lr:.1e}, "
        f"{result.iterations_per_second:.2f} it/s, {result.seconds:.1f} s"
    )
    assert p_zssr > p_bic + 0.3


@pytest.mark.slow
def test_batched_equals_single(load_photo):
    lr = load_photo("set5/bird.png")[100:148, 80:136]  # 48x56 "LR"
    kernels = [anisotropic_gaussian(13, 2.0, 0.8, 0.4, 2), anisotropic_gaussian(11, 1.0, 3.0, 2.0, 2)]
    mask = np.zeros(lr.shape[:2], bool)
    mask[4:44, 20:56] = True
    masks = [None, mask]
    seeds = [7, 123]
    config = _tiny()
    both = run_zssr(lr, kernels, 2, config, masks=masks, seeds=seeds)
    for i in range(2):
        alone = run_zssr(lr, kernels[i : i + 1], 2, config, masks=masks[i : i + 1], seeds=seeds[i : i + 1])
        a, b = both.members[i].stages[0], alone.members[0].stages[0]
        print(f"\nmember {i}: batched {a.iterations} it lr {a.final_lr:.0e}; alone {b.iterations} it lr {b.final_lr:.0e}")
        assert (a.iterations, a.final_lr) == (b.iterations, b.final_lr)
        np.testing.assert_allclose(both.images[i], alone.images[0], rtol=0, atol=2e-4)
    assert not np.allclose(both.images[0], both.images[1], atol=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("scale", [2, 4])
def test_images_packed_together_equal_each_image_alone(load_photo, scale):
    """Cross-image packing: the members of two RGB images of different sizes train in one batch (a
    grey image in a batch of its own) and every member gets exactly what its image's own call gives,
    also when members stop at different iterations."""
    bird = load_photo("set5/bird.png")[100:148, 80:136]  # 48x56
    face = load_photo("set14/face.png")[20:60, 30:94]  # 40x64
    grey = load_photo("set5/baby.png")[60:100, 60:100].mean(axis=2).astype(np.float32)
    k1, k2 = anisotropic_gaussian(13, 2.0, 0.8, 0.4, 2), anisotropic_gaussian(13, 1.0, 1.5, 2.0, 2)
    mask = np.zeros(bird.shape[:2], bool)
    mask[4:44, 20:56] = True
    jobs = [ZSSRJob(bird, [k1, k2], [None, mask], [7, 123]), ZSSRJob(face, [k2], None, [5]), ZSSRJob(grey, [k1], None, [3])]
    config = _tiny(iterations=48, lr_min=5e-5)  # one member stops early (lr below lr_min)
    packed = run_zssr_many(jobs, scale, config)
    alone = [run_zssr(j.image, j.kernels, scale, config, masks=j.masks, seeds=j.seeds) for j in jobs]
    stops = {m.iterations for r in alone for m in r.members}
    assert len(stops) > 1, "members should stop at different iterations for this test to mean something"
    for p, a in zip(packed, alone):
        assert [m.iterations for m in p.members] == [m.iterations for m in a.members]
        assert [m.final_lr for m in p.members] == [m.final_lr for m in a.members]
        for x, y in zip(p.images, a.images):
            assert x.shape == y.shape and np.array_equal(x, y)
    assert packed[0].iterations == packed[1].iterations  # bird and face trained in one batch
    assert packed[2].images[0].shape == (scale * 40, scale * 40)


@pytest.mark.slow
def test_finished_members_frozen_in_the_batch_equal_members_that_leave_it(load_photo):
    """Fixed-size batches (what a captured CUDA graph needs): finished members stay at lr 0 until
    half the batch is frozen; the weights equal those of the compacting path bit for bit."""
    lr = load_photo("set5/bird.png")[100:148, 80:136]
    kernels = align_kernels([anisotropic_gaussian(13, 2.0, 0.8, 0.4, 2), anisotropic_gaussian(13, 1.0, 1.5, 2.0, 2)] * 3)[:5]
    mask = np.zeros(lr.shape[:2], bool)
    mask[4:44, 20:56] = True
    masks = [None, mask, mask, None, mask]
    config = _tiny(iterations=48, lr_min=5e-5)
    source = torch.from_numpy(np.ascontiguousarray(lr.transpose(2, 0, 1)))[None].expand(5, -1, -1, -1)
    runs = [train_members([father_levels(source, masks, config)], kernels, 2, config, [7, 123, 9, 4, 11], 24, freeze_finished=f)
            for f in (False, True)]
    (net_a, infos_a, _), (net_b, infos_b, _) = runs
    stops = [i.iterations for i in infos_a]
    assert 0 < 2 * stops.count(min(stops)) < len(stops), f"the first to stop should be frozen, not compacted: {stops}"
    assert [(i.iterations, i.final_lr, i.loss) for i in infos_a] == [(i.iterations, i.final_lr, i.loss) for i in infos_b]
    for wa, wb in zip(net_a.parameters(), net_b.parameters()):
        assert torch.equal(wa, wb)


@pytest.mark.slow
def test_a_member_that_joins_a_running_batch_equals_the_member_alone(load_photo):
    """The batch refills as it empties: when member A finishes, B (another image) joins while C is
    still training; each of the three gets exactly what it gets alone, and B's training overlaps C's."""
    bird = load_photo("set5/bird.png")[100:148, 80:136]
    face = load_photo("set14/face.png")[20:60, 30:94]
    k1, k2 = align_kernels([anisotropic_gaussian(13, 2.0, 0.8, 0.4, 2), anisotropic_gaussian(13, 1.0, 1.5, 2.0, 2)])
    mask = np.zeros(bird.shape[:2], bool)
    mask[4:44, 20:56] = True
    config = _tiny(iterations=48, lr_min=5e-5)

    def source(image, masks):
        lr = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]
        return father_levels(lr.expand(len(masks), -1, -1, -1), masks, config)

    a = Joiner(source(bird, [mask]), k1[None], [9], ["A"])
    c = Joiner(source(bird, [None]), k1[None], [7], ["C"])
    b = Joiner(source(face, [None]), k2[None], [5], ["B"])

    def run(joiners, then=None):
        got: dict = {}

        def on_finish(finished):
            for name, info, net in finished:
                got[name] = (info, net)
            return [then] if then is not None and any(name == "A" for name, _, _ in finished) else []

        return got, train_pool(joiners, 2, config, 24, on_finish)

    together, iterations = run([a, c], then=b)
    alone = {name: run([j])[0][name] for name, j in (("A", a), ("B", b), ("C", c))}
    assert together["A"][0].iterations < together["C"][0].iterations  # A leaves first, then B joins
    for name in "ABC":
        (info, net), (info_alone, net_alone) = together[name], alone[name]
        assert (info.iterations, info.final_lr, info.loss, info.rec_error) == (info_alone.iterations, info_alone.final_lr, info_alone.loss, info_alone.rec_error)
        for w, w_alone in zip(net.parameters(), net_alone.parameters()):
            assert torch.equal(w, w_alone), name
    joined_at = together["A"][0].iterations  # a multiple of the checks' rhythm here (8)
    assert iterations == max(together["C"][0].iterations, joined_at + together["B"][0].iterations)
    assert iterations < together["A"][0].iterations + together["B"][0].iterations + together["C"][0].iterations


@pytest.mark.slow
def test_x4_gradual_beats_bicubic(load_photo):
    hr = load_photo("set5/butterfly.png")[40:200, 40:200]  # 160x160 HR -> 40x40 LR
    k2 = anisotropic_gaussian(13, 1.8, 0.9, 1.1, 2)
    lr = degrade(hr, analytic_x4(k2), 4)
    config = ZSSRConfig.preset("fast").with_(iterations=120, crop_size=32, min_iterations=40)
    result = run_zssr(lr, [k2], 4, config, seeds=[1])
    sr = result.images[0]
    assert sr.shape == (4 * lr.shape[0], 4 * lr.shape[1], 3)
    assert len(result.members[0].stages) == 2
    p_bic = psnr(_bicubic(lr, 4), hr, shave=4, y=True)
    p_zssr = psnr(sr, hr, shave=4, y=True)
    print(f"\nx4 Y-PSNR bicubic {p_bic:.2f} dB, ZSSR (gradual) {p_zssr:.2f} dB, {result.seconds:.1f} s")
    assert p_zssr > p_bic + 0.3


@pytest.mark.slow
def test_grey_and_rgba_inputs(load_photo):
    rgb = load_photo("set14/face.png")[60:156, 60:156]
    grey_hr = rgb.mean(axis=2).astype(np.float32)  # 96x96 HR -> 48x48 LR
    kernel = anisotropic_gaussian(13, 2.0, 1.2, 0.0, 2)
    lr = degrade(grey_hr[..., None], kernel, 2)[..., 0]
    out = run_zssr(lr, [kernel], 2, _tiny(iterations=60, crop_size=32), seeds=[3]).images[0]
    assert out.shape == grey_hr.shape and out.dtype == np.float32
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    p_bic, p_zssr = psnr(_bicubic(lr, 2), grey_hr, shave=2), psnr(out, grey_hr, shave=2)
    print(f"\ngrey x2 PSNR bicubic {p_bic:.2f} dB, ZSSR {p_zssr:.2f} dB")
    assert p_zssr > p_bic
    # RGBA: colour through ZSSR, alpha bicubic.
    rgba = np.concatenate([rgb[::2, ::2], np.full((48, 48, 1), 0.5, np.float32)], axis=2)
    out4 = run_zssr(rgba, [kernel], 2, _tiny(iterations=4, crop_size=16), seeds=[0]).images[0]
    assert out4.shape == (96, 96, 4)
    np.testing.assert_allclose(out4[..., 3], 0.5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("scale", [2, 4])
def test_run_zssr_tiled_equals_untiled_and_skips_tiles_away_from_the_region(load_photo, scale):
    """The whole call (gradual x4 included): 24-px tiles give the one-tile result; a region in one
    corner runs only the tiles it (and its feather band) needs, the rest is plain bicubic."""
    lr = load_photo("set5/bird.png")[60:132, 40:136]  # 72x96
    kernel = anisotropic_gaussian(13, 2.0, 1.0, 0.4, 2)
    mask = np.zeros(lr.shape[:2], bool)
    mask[:20, :24] = True
    config = _tiny(iterations=8, min_iterations=4)
    one = run_zssr(lr, [kernel, kernel], scale, config.with_(tile=4096), masks=[None, mask], seeds=[1, 2])
    tiled = run_zssr(lr, [kernel, kernel], scale, config.with_(tile=24), masks=[None, mask], seeds=[1, 2])
    steps = 2 if scale == 4 else 1
    assert [m.tiles for m in one.members] == [[1] * steps] * 2 and tiled.members[0].tiles == [3 * 4] * steps
    np.testing.assert_allclose(tiled.images[0], one.images[0], rtol=0, atol=5e-5)
    assert tiled.members[1].tiles[-1] == 4  # the region's 2x2 corner tiles; its 16-px margin stays inside them
    needed = slice(0, 36 * scale), slice(0, 40 * scale)  # the region grown by the margin
    np.testing.assert_allclose(tiled.images[1][needed], one.images[1][needed], rtol=0, atol=5e-5)
    far = tiled.images[1][48 * scale :, 48 * scale :]
    np.testing.assert_allclose(far, _bicubic(lr, scale)[48 * scale :, 48 * scale :], rtol=0, atol=1e-5)
