"""KernelGAN (train/kernelgan.py): the generator's kernel, batched == single, the stability guard,
the windowed / in-place / frozen-slot step against the per-step reference, odd inputs, and kernel
recovery on a real photo (fast preset)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from mkgan_engine.train import kernelgan, losses, sampler
from mkgan_engine.train.config import KernelGANConfig
from mkgan_engine.train.degradation import anisotropic_gaussian, degrade
from mkgan_engine.train.generator import BatchedGenerator, GaussianGenerator
from mkgan_engine.train.graphs import StepRunner
from mkgan_engine.train.kernel import kernel_error, kernel_moments, sf_center
from mkgan_engine.train.kernelgan import diagnose_kernel, estimate_kernels


RECOVERY_PHOTO = "set14/man.png"


def _short(iterations: int = 40) -> KernelGANConfig:
    """A few dozen iterations: for behaviour, not quality."""
    return KernelGANConfig.preset("fast").with_(iterations=iterations)


# ------------------------------------------------------------------------------------------------
# Generator and guard (no training)
# ------------------------------------------------------------------------------------------------
def test_effective_kernel_is_the_network():
    g = BatchedGenerator.create([0, 5, 9], (7, 5, 3, 1, 1, 1), 64)
    k = g.kernel()
    assert k.shape == (3, 13, 13)
    torch.testing.assert_close(k, g.kernel_by_delta(), rtol=1e-4, atol=1e-6 * float(k.detach().abs().max()))
    x = torch.rand(3, 3, 64, 64)
    out = g.forward(x)
    assert out.shape == (3, 3, 26, 26)
    torch.testing.assert_close(out, g.forward_layers(x), rtol=1e-4, atol=1e-6 * float(out.detach().abs().max()))


def test_initial_kernels_have_a_positive_sum():
    # A deep linear generator started with a negative kernel sum is stuck at the saddle at zero.
    g = BatchedGenerator.create(list(range(32)), (7, 5, 3, 1, 1, 1), 64)
    assert bool((g.kernel().sum(dim=(1, 2)) > 0).all())


def test_gaussian_kernel_model_is_the_anisotropic_gaussian():
    # (log(sigma_major - floor), log(sigma_minor - floor), theta) -> the same kernel as the
    # benchmark's degradation (variances 4.0 / 0.6 at 60 deg, and 1.0 / 1.0).
    floor = 0.55
    excess = [np.log(np.sqrt(4.0) - floor), np.log(np.sqrt(0.6) - floor), np.log(1.0 - floor)]
    params = torch.tensor([[excess[0], excess[1], np.pi / 3], [excess[2], excess[2], 0.0]], dtype=torch.float64)
    g = GaussianGenerator(params.requires_grad_(True), 13, floor)
    k = g.kernel()
    np.testing.assert_allclose(k[0].detach().numpy(), anisotropic_gaussian(13, 4.0, 0.6, np.pi / 3, 2), atol=1e-6)
    np.testing.assert_allclose(k[1].detach().numpy(), anisotropic_gaussian(13, 1.0, 1.0, 0.0, 2), atol=1e-6)
    a, b, theta = kernel_moments(k[0].detach().numpy())
    assert np.degrees(theta) == pytest.approx(60, abs=1)
    (grad,) = torch.autograd.grad(k[0, 6, 6], [g.flat])
    assert torch.isfinite(grad).all() and grad[0].abs().sum() > 0 and grad[1].abs().sum() == 0
    fresh = GaussianGenerator.create([0, 1], 13, floor)
    assert fresh.kernel().shape == (2, 13, 13) and not torch.allclose(fresh.flat[0], fresh.flat[1])
    # However far training pushes the parameters down, no sigma goes below the floor.
    low = GaussianGenerator(torch.tensor([[-30.0, -30.0, 0.3]]), 13, floor)
    assert float(low.sigmas().min()) >= floor
    np.testing.assert_allclose(low.kernel()[0].numpy(), anisotropic_gaussian(13, floor**2, floor**2, 0.0, 2), atol=1e-6)


def test_diagnose_kernel():
    good = anisotropic_gaussian(13, 1.5, 0.8, 0.3, 2)
    assert diagnose_kernel(good) is None
    delta = np.zeros((13, 13), np.float32)
    delta[6, 6] = 1.0
    assert "delta" in diagnose_kernel(delta)
    noise = np.random.default_rng(0).standard_normal((13, 13)).astype(np.float32)
    assert "noise" in diagnose_kernel(noise)
    assert "flat" in diagnose_kernel(np.full((13, 13), 1 / 169, np.float32))
    assert "non-finite" in diagnose_kernel(np.where(good > 0.05, np.nan, good))


# ------------------------------------------------------------------------------------------------
# Training behaviour (short runs)
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("kernel_model", ["deep-linear", "gaussian"])
def test_batched_members_equal_members_trained_alone(load_photo, kernel_model):
    image = load_photo("set5/bird.png")[:96, :112]
    other = load_photo("set14/man.png")[:80, :96]
    mask = np.zeros(image.shape[:2], bool)
    mask[:, 40:] = True
    images, masks, seeds = [image, other, image], [None, None, mask], [3, 11, 3]
    config = _short(40).with_(kernel_model=kernel_model)
    # float64: a GAN amplifies float32 rounding differences (grouped vs single convolutions) within
    # a few dozen Adam steps; in float64 batched and alone agree to ~1e-7 after 40 iterations.
    together = estimate_kernels(images, masks, config, seeds, check_every=20, dtype=torch.float64)
    for i in range(3):
        alone = estimate_kernels(
            images[i : i + 1], masks[i : i + 1], config, seeds[i : i + 1], check_every=20, dtype=torch.float64
        )[0]
        scale = np.abs(alone.raw_kernel).max()
        np.testing.assert_allclose(together[i].raw_kernel, alone.raw_kernel, rtol=0, atol=1e-5 * scale)
        np.testing.assert_allclose(together[i].kernel, alone.kernel, rtol=0, atol=1e-5)
    # Same image and seed but another region: a different kernel.
    assert not np.allclose(together[0].raw_kernel, together[2].raw_kernel, atol=1e-6)


@pytest.mark.slow
def test_a_hybrid_restart_starts_again_from_the_kenet_kernel(load_photo, monkeypatch):
    """hybrid = the gaussian model started from KENet's kernel: a member restarted by the guard
    starts from that kernel again, not from the generator's default Gaussian."""
    image = load_photo("set5/bird.png")[:96, :96]
    start = anisotropic_gaussian(13, 3.0, 0.5, np.pi / 3, 2)
    real = losses.downscale_loss
    calls = {"n": 0}

    def poisoned(g_input: torch.Tensor, g_output: torch.Tensor) -> torch.Tensor:
        loss = real(g_input, g_output)
        calls["n"] += 1
        return loss if calls["n"] > 3 else loss.clone().fill_(float("nan"))  # every member: NaN, then restart

    monkeypatch.setattr(kernelgan.losses, "downscale_loss", poisoned)
    config = _short(12).with_(kernel_model="gaussian")
    est = estimate_kernels([image], None, config, [0], check_every=6, start_kernels=[start])
    assert est[0].restarts == 1
    assert kernel_error(est[0].kernel, start)["psnr"] > 40.0  # 6 small steps from the start
    default = GaussianGenerator.create([est[0].final_seed], min_sigma=config.gaussian_min_sigma)
    with torch.no_grad():
        assert kernel_error(default.kernel()[0].numpy(), start)["psnr"] < 35.0  # what a lost start gives


@pytest.mark.slow
def test_the_guard_judges_the_kernel_shape_only_once_the_regularisers_have_settled(load_photo, monkeypatch):
    """A deep-linear kernel has much negative mass before the centralisation/sparsity terms come on
    (the textbook loop shows it, docs/kernel-estimation.md): a shape verdict then must not restart
    the member. Here every kernel 'looks like noise': the first restart comes only once the
    regularisers have been on for ``bicubic_decay_every`` iterations."""
    image = load_photo("set5/bird.png")[:96, :96]
    monkeypatch.setattr(kernelgan, "diagnose_kernel", lambda raw: "kernel collapsed to noise (large negative mass)")
    config = _short(300).with_(max_restarts=1)
    est = estimate_kernels([image], None, config, [0], check_every=10)[0]
    first = est.history["run"] == 0
    weights, iterations = est.history["bicubic_weight"][first], est.history["iteration"][first]
    on_at = iterations[np.argmax(weights < config.regularizers_on_below)]
    assert weights.min() < config.regularizers_on_below and est.restarts == 1
    restart_at = int(est.messages[0].split("at iteration ")[1].split(":")[0])
    assert restart_at == on_at + config.bicubic_decay_every  # the first check after settling, not before
    assert restart_at > 100


@pytest.mark.slow
def test_nan_restarts_the_member_with_a_new_seed(load_photo, monkeypatch, caplog):
    image = load_photo("set5/bird.png")[:96, :96]
    real = losses.downscale_loss
    calls = {"n": 0}

    def poisoned(g_input: torch.Tensor, g_output: torch.Tensor) -> torch.Tensor:
        loss = real(g_input, g_output)
        calls["n"] += 1
        if calls["n"] <= 3:  # member 0 produces a NaN in its first iterations
            loss = loss.clone()
            loss[0] = float("nan")
        return loss

    monkeypatch.setattr(kernelgan.losses, "downscale_loss", poisoned)
    caplog.set_level(logging.WARNING, logger=kernelgan.logger.name)  # setLevel: also resets the loggers' level caches
    est = estimate_kernels([image, image], None, _short(30), [0, 1], check_every=10)
    assert est[0].restarts == 1 and est[0].final_seed != 0
    assert any("restart 1/" in m and "non-finite" in m for m in est[0].messages)
    assert any("restart 1/" in r.getMessage() for r in caplog.records)  # logged, not only recorded
    assert est[1].restarts == 0 and not est[1].messages
    for e in est:
        assert e.status == "ok" and np.isfinite(e.kernel).all() and e.kernel.sum() == pytest.approx(1, abs=1e-4)


def _poison_downscale_loss(monkeypatch, members: list[int], calls: int = 3) -> None:
    """The DownScaleLoss of ``members`` is NaN in its first ``calls`` calls from now on (those
    members restart at their first check); call again before each run."""
    real = losses.downscale_loss
    count = {"n": 0}

    def poisoned(g_input: torch.Tensor, g_output: torch.Tensor) -> torch.Tensor:
        loss = real(g_input, g_output)
        count["n"] += 1
        if count["n"] <= calls:
            loss = loss.clone()
            loss[members] = float("nan")
        return loss

    monkeypatch.setattr(kernelgan.losses, "downscale_loss", poisoned)


def _assert_same_estimates(got: list[kernelgan.KernelEstimate], want: list[kernelgan.KernelEstimate], what: str) -> None:
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        where = f"{what}, member {i}"
        assert (g.status, g.restarts, g.iterations, g.final_seed, g.messages) == (
            w.status, w.restarts, w.iterations, w.final_seed, w.messages), where
        assert np.array_equal(g.raw_kernel, w.raw_kernel) and np.array_equal(g.kernel, w.kernel), where
        assert g.history.keys() == w.history.keys(), where
        for key in w.history:
            assert np.array_equal(g.history[key], w.history[key]), f"{where}, history {key}"


@pytest.mark.slow
def test_windows_and_frozen_slots_give_the_per_step_results(load_photo, monkeypatch):
    """Random-number windows, the in-place step and frozen slots change the work, not the numbers:
    bit for bit the per-step, always-compacted reference (``_window=1, _compact_share=0``). Member
    0 restarts after a NaN at iteration 10, so members 1 and 2 finish 10 iterations before it;
    windows of 3 and 7 steps straddle the checks (every 10)."""
    bird = load_photo("set5/bird.png")[:96, :112]
    man = load_photo("set14/man.png")[:80, :96]
    mask = np.zeros(bird.shape[:2], bool)
    mask[:, 40:] = True
    images, masks, seeds = [bird, man, bird], [None, None, mask], [3, 11, 5]
    config = _short(30)

    def run(dtype: torch.dtype, config: KernelGANConfig = config, **private) -> list[kernelgan.KernelEstimate]:
        _poison_downscale_loss(monkeypatch, [0])
        return estimate_kernels(images, masks, config, seeds, check_every=10, dtype=dtype, **private)

    for dtype in (torch.float64, torch.float32):
        reference = run(dtype, _window=1, _compact_share=0.0)
        assert [(e.restarts, e.iterations) for e in reference] == [(1, 40), (0, 30), (0, 30)]
        variants: dict[str, dict] = {"default": {}}
        if dtype == torch.float64:  # frozen slots: M = 3 where the reference has 1 (see COMPACT_SHARE)
            variants["window 3, never rebuilt"] = {"_window": 3, "_compact_share": 1.0}
        else:  # rebuilt when 2 of 3 slots are frozen: at iteration 30, as the reference
            variants["window 7, rebuilt at half frozen, cuda_graphs (eager here)"] = {
                "_window": 7, "_compact_share": 0.5, "config": config.with_(cuda_graphs=True)}
        for name, private in variants.items():
            _assert_same_estimates(run(dtype, **private), reference, f"{dtype}, {name}")
    # float32 with frozen slots: the CPU's grouped convolutions round differently for M = 1 and M = 3
    # (COMPACT_SHARE), so member 0 only agrees to float32 rounding amplified by 10 GAN steps.
    frozen = run(torch.float32, _compact_share=1.0)
    for f, r in zip(frozen, reference):
        np.testing.assert_allclose(f.kernel, r.kernel, rtol=0, atol=1e-3)


def _state_tensors(value: object, path: str = "batch") -> dict[str, torch.Tensor]:
    """Every tensor reachable from a training object (its attributes, dicts, lists and our own
    classes' attributes) by attribute path."""
    if isinstance(value, torch.Tensor):
        return {path: value}
    if isinstance(value, dict):
        items = [(f"{path}[{k!r}]", v) for k, v in value.items()]
    elif isinstance(value, (list, tuple)):
        items = [(f"{path}[{i}]", v) for i, v in enumerate(value)]
    elif type(value).__module__.startswith("mkgan_engine.train") and hasattr(value, "__dict__"):
        items = [(f"{path}.{k}", v) for k, v in vars(value).items()]
    else:
        return {}
    out: dict[str, torch.Tensor] = {}
    for sub, v in items:
        out.update(_state_tensors(v, sub))
    return out


@pytest.mark.parametrize("kernel_model", ["deep-linear", "gaussian"])
def test_a_step_rebinds_no_state_tensor(load_photo, kernel_model):
    """What a CUDA graph of ``train_step`` needs: every state tensor (weights, Adam moments and
    step counts, schedule, counters, window buffers, outputs) is updated in place, through window
    refills, a restart and a freeze; only :meth:`_Batch.select` makes new ones."""
    config = _short(10).with_(kernel_model=kernel_model, g_channels=16, d_channels=16)
    arr, _ = kernelgan.prepare_image(load_photo("set5/bird.png")[:80, :80])
    g_map, d_map = sampler.region_crop_maps(arr, None, config.crop_size, 26)
    images = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))[None].expand(3, -1, -1, -1).contiguous()
    cdfs = [sampler.build_cdfs([m.prob] * 3, arr.shape[:2]) for m in (g_map, d_map)]
    batch = kernelgan._Batch(images, *cdfs, [0, 1, 2], config, window=3)
    before = {path: (id(t), t.data_ptr()) for path, t in _state_tensors(batch).items()}
    assert {"batch.steps", "batch.g.flat", "batch.d.vectors['u0']", "batch.adam_g.exp_avg[0]", "batch.adam_d.steps",
            "batch.schedule.bicubic_weight", "batch.schedule.below", "batch.last['loss_g']", "batch.noise",
            "batch.window_pos", "batch.frozen"} <= set(before)
    flat0 = batch.g.flat.detach().clone()
    for _ in range(4):  # the second window is drawn at the fourth step
        batch.step()
    batch.restart(1, 1234)
    batch.freeze(2)
    for _ in range(2):
        batch.step()
    after = {path: (id(t), t.data_ptr()) for path, t in _state_tensors(batch).items()}
    assert after == before
    assert batch.steps.tolist() == [6, 2, 6] and batch.adam_g.steps.tolist() == [6, 2, 6]
    assert not torch.equal(batch.g.flat[0], flat0[0])  # it trained, in place
    frozen = batch.g.flat.detach()[2].clone()
    batch.step()
    assert torch.equal(batch.g.flat.detach()[2], frozen)  # a frozen slot's weights stay
    batch.select([0, 1])
    assert batch.members == 2 and batch.g.flat.data_ptr() != before["batch.g.flat"][1]


def test_the_step_runner_is_eager_off_cuda():
    calls = []
    runner = StepRunner(lambda: calls.append(1), torch.device("cpu"), capture=True)
    for _ in range(5):
        runner()
    assert len(calls) == 5 and not runner.captured and runner.calls == 5


@pytest.mark.slow
def test_grey_rgba_and_out_of_range_inputs_are_not_modified(load_photo):
    rgb = load_photo("set5/baby.png")[:80, :80]
    grey = rgb.mean(axis=2)
    rgba = np.concatenate([rgb, np.full((80, 80, 1), 0.3, np.float32)], axis=2)
    hot = rgb * 1.5  # out of range: clipped on a copy
    inputs = [grey, rgba, hot]
    copies = [a.copy() for a in inputs]
    est = estimate_kernels(inputs, None, _short(10), [0, 0, 0], check_every=10, dtype=torch.float64)
    for a, c in zip(inputs, copies):
        np.testing.assert_array_equal(a, c)
    assert all(np.isfinite(e.kernel).all() for e in est)
    assert any("clipped" in m for m in est[2].messages)
    # A grey image is the RGB image with equal channels: same crops, same kernel as its RGB copy.
    grey3 = estimate_kernels([np.repeat(grey[..., None], 3, axis=2)], None, _short(10), [0], check_every=10, dtype=torch.float64)[0]
    np.testing.assert_allclose(est[0].kernel, grey3.kernel, atol=1e-6)


def test_bad_inputs_raise_clear_errors(load_photo):
    image = load_photo("set5/bird.png")[:96, :96]
    with pytest.raises(ValueError, match="at least 64x64"):
        estimate_kernels([image[:50]], None, _short(5))
    with pytest.raises(ValueError, match="empty"):
        estimate_kernels([image], [np.zeros((96, 96), bool)], _short(5))
    with pytest.raises(ValueError, match="shape"):
        estimate_kernels([image], [np.ones((90, 96), bool)], _short(5))


# ------------------------------------------------------------------------------------------------
# Kernel recovery on a real photo
# ------------------------------------------------------------------------------------------------
def _recovery_pair(load_photo, config: KernelGANConfig) -> tuple[tuple, tuple, float]:
    """Degrade RECOVERY_PHOTO by a wide anisotropic and by a narrow kernel, estimate both with seed 0
    and print what came out. Returns ((wide sigmas), (narrow sigmas), wide axis error in degrees)."""
    hr = load_photo(RECOVERY_PHOTO)
    hr = hr[: hr.shape[0] // 2 * 2, : hr.shape[1] // 2 * 2]
    wide = anisotropic_gaussian(13, 4.0, 0.6, np.pi / 3, 2)  # sigmas 2.0 / 0.77 px, major axis at 60 deg
    narrow = anisotropic_gaussian(13, 0.5, 0.5, 0.0, 2)  # sigma 0.71 px
    lrs = [degrade(hr, k, 2) for k in (wide, narrow)]
    est = estimate_kernels(lrs, None, config, [0, 0])
    (wa, wb, wt), (na, nb, _) = kernel_moments(est[0].kernel), kernel_moments(est[1].kernel)
    err_w, err_n = kernel_error(est[0].kernel, wide), kernel_error(est[1].kernel, narrow)
    angle = abs((np.degrees(wt) - 60.0 + 90.0) % 180.0 - 90.0)
    print(
        f"\n{config.kernel_model}, {config.iterations} iterations"
        f"\nwide:   sigmas {wa:.2f}/{wb:.2f} px (truth 2.00/0.77), angle {np.degrees(wt):.0f} deg (truth 60), "
        f"kernel PSNR {err_w['psnr']:.1f} dB, L1 {err_w['l1']:.2f}, restarts {est[0].restarts}"
        f"\nnarrow: sigmas {na:.2f}/{nb:.2f} px (truth 0.71/0.71), kernel PSNR {err_n['psnr']:.1f} dB, "
        f"L1 {err_n['l1']:.2f}, restarts {est[1].restarts}"
    )
    for e in est:
        assert e.kernel.shape == (13, 13) and e.kernel.sum() == pytest.approx(1, abs=1e-4)
        assert abs(float((e.kernel * np.arange(13)[None]).sum()) - sf_center(13, 2)) < 0.05
    return (wa, wb, err_w["psnr"]), (na, nb, err_n["psnr"]), angle


# The deep-linear generator's recovery at the fast preset depends on the seed (wide estimated wider
# than narrow in 3 of 6 runs, RESULTS.md kernel-recovery-fast-deep-linear): it is measured by
# benchmarks/kernel_recovery.py, not asserted here. The gaussian model's recovery below holds in 6 of 6.
@pytest.mark.slow
def test_gaussian_kernel_model_recovers_a_narrow_kernel(load_photo):
    # The kernel prior with the longer schedule of RESULTS.md's section
    # kernel-recovery-fast-gaussian-iterations=2000-...: the narrow kernel is found (the deep linear
    # generator estimates it at ~1.5 px), the wide one is wider and on its axis (but still
    # under-estimated: 1.07 / 0.60 px for 2.00 / 0.77 px with this seed).
    config = KernelGANConfig.preset("fast").with_(
        kernel_model="gaussian", iterations=2000, gaussian_lr=2e-3, lr_decay_every=1500
    )
    (wa, wb, _), (na, nb, narrow_psnr), angle = _recovery_pair(load_photo, config)
    assert wa * wb > na * nb
    assert angle < 30.0
    assert max(na, nb) < 0.9 and narrow_psnr > 35.0
