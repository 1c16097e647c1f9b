"""The trainers on CUDA (all skipped without it; run by benchmarks/gpu_check.sh on a GPU machine).

CUDA against the CPU (KernelGAN in float64, ZSSR in float32 without autocast, TF32 off), ZSSR's
bfloat16 autocast, a small ``Engine.run``, the masked-crop op on the trainers' own inputs, the
promise of the trainers' docstrings that a training step queues its work without waiting for the
GPU (``torch.cuda.set_sync_debug_mode``), and both training steps captured in CUDA graphs
(``KernelGANConfig.cuda_graphs``, ``ZSSRConfig.cuda_graphs``): the same kernels / SR images as eager
steps, no host sync per replay. Sizes are small: the whole file takes about a minute.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mkgan_engine import Engine, EngineConfig, MaskerConfig, RegionInfo, RegionMap
from mkgan_engine.imageio import read_image
from mkgan_engine.metrics import psnr
from mkgan_engine.train import graphs, kernelgan, rng, sampler
from mkgan_engine.train.config import KernelGANConfig, ZSSRConfig
from mkgan_engine.train.degradation import anisotropic_gaussian, degrade
from mkgan_engine.train.kernelgan import estimate_kernels
from mkgan_engine.train.masked_crop import gather_crops, gather_crops_reference
from mkgan_engine.train.zssr import run_zssr
from mkgan_engine.train.zssr_data import (
    build_father_canvas,
    dihedral_permutations,
    father_levels,
    sample_fathers,
)

pytestmark = pytest.mark.gpu

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples"
CUDA = torch.device("cuda")
QUICK_KG = KernelGANConfig.preset("fast").with_(iterations=30)
QUICK_ZSSR = ZSSRConfig.preset("fast").with_(iterations=30, min_iterations=10)


def _gpu_steps() -> ModuleType:
    """benchmarks/gpu_steps.py (its batch builders and the host-sync recorder)."""
    spec = importlib.util.spec_from_file_location("benchmarks_gpu_steps", REPO / "benchmarks" / "gpu_steps.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.fixture(autouse=True)
def no_tf32():
    """Full float32 matmuls and convolutions on CUDA (comparable with the CPU), restored afterwards."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture(scope="module")
def bird() -> np.ndarray:
    """The bundled 144x144 LR sample, float32 HxWx3 in [0, 1]."""
    return read_image(SAMPLES / "set5_bird.png").rgb


def _bicubic(lr: np.ndarray, scale: int) -> np.ndarray:
    x = torch.from_numpy(np.ascontiguousarray(lr.transpose(2, 0, 1)))[None]
    return F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1)[0].numpy().transpose(1, 2, 0)


# ------------------------------------------------------------------------------------------------
# CUDA == CPU
# ------------------------------------------------------------------------------------------------
def test_kernelgan_on_cuda_matches_the_cpu_in_float64(bird):
    image = bird[:96, :112]
    mask = np.zeros(image.shape[:2], bool)
    mask[:, 40:] = True
    args = ([image, image], [None, mask], QUICK_KG, [3, 11])
    cpu = estimate_kernels(*args, device="cpu", check_every=15, dtype=torch.float64)
    gpu = estimate_kernels(*args, device="cuda", check_every=15, dtype=torch.float64)
    for c, g in zip(cpu, gpu):
        assert (g.status, g.restarts, g.iterations) == (c.status, c.restarts, c.iterations)
        scale = float(np.abs(c.raw_kernel).max())
        np.testing.assert_allclose(g.raw_kernel, c.raw_kernel, rtol=0, atol=1e-5 * scale)
        np.testing.assert_allclose(g.kernel, c.kernel, rtol=0, atol=1e-5)
    assert not np.allclose(gpu[0].raw_kernel, gpu[1].raw_kernel, atol=1e-6)  # two regions, two kernels


def test_zssr_on_cuda_matches_the_cpu_in_float32(bird):
    """Grouped CUDA convolutions against the CPU's member loop, no autocast: the same iterations and
    nearly the same images (Adam turns rounding differences into ~lr-sized weight differences, so
    the comparison is by PSNR, not bits; on the CPU, initial weights perturbed by 1e-5 relative give
    63 dB and a largest pixel difference of 9e-3 with this setting)."""
    lr = bird[40:100, 30:102]  # 60x72
    kernels = [anisotropic_gaussian(13, 2.0, 0.8, 0.4, 2), anisotropic_gaussian(11, 1.0, 3.0, 2.0, 2)]
    mask = np.zeros(lr.shape[:2], bool)
    mask[4:56, 24:72] = True
    config = ZSSRConfig.preset("fast").with_(iterations=24, crop_size=32, min_iterations=24, lr_policy_every=1000,
                                             rec_every=4, amp=False)
    cpu = run_zssr(lr, kernels, 2, config, masks=[None, mask], seeds=[7, 123], device="cpu")
    gpu = run_zssr(lr, kernels, 2, config, masks=[None, mask], seeds=[7, 123], device="cuda")
    for i in range(2):
        c, g = cpu.members[i].stages[0], gpu.members[i].stages[0]
        assert (g.iterations, g.final_lr, g.rule) == (c.iterations, c.final_lr, c.rule)
        assert g.loss == pytest.approx(c.loss, rel=2e-2)
        assert psnr(gpu.images[i], cpu.images[i], y=False) > 45.0
        assert np.abs(gpu.images[i] - cpu.images[i]).max() < 5e-2


def test_zssr_bfloat16_autocast_is_finite_and_beats_bicubic():
    assert torch.cuda.is_bf16_supported()
    hr = read_image(SAMPLES / "hr" / "set5_butterfly.png").rgb[:192, :192]
    kernel = anisotropic_gaussian(13, 2.5, 1.0, 0.6, 2)
    lr = degrade(hr, kernel, 2)
    config = ZSSRConfig.preset("fast")
    bf16 = run_zssr(lr, [kernel], 2, config, seeds=[0], device="cuda").images[0]
    fp32 = run_zssr(lr, [kernel], 2, config.with_(amp=False), seeds=[0], device="cuda").images[0]
    assert bf16.shape == hr.shape and bf16.dtype == np.float32
    assert np.isfinite(bf16).all() and bf16.min() >= 0 and bf16.max() <= 1
    p_bic, p_bf16, p_fp32 = (psnr(x, hr, shave=2, y=True) for x in (_bicubic(lr, 2), bf16, fp32))
    print(f"\nx2 Y-PSNR bicubic {p_bic:.2f} dB, ZSSR bf16 {p_bf16:.2f} dB, fp32 {p_fp32:.2f} dB")
    assert p_bf16 > p_bic
    assert abs(p_bf16 - p_fp32) < 0.5


def test_engine_runs_on_cuda(bird):
    lr = bird[:128, :128].copy()
    labels = np.zeros(lr.shape[:2], np.int32)
    labels[:, 64:] = 1
    region_map = RegionMap(labels, [RegionInfo(0, "left", "test"), RegionInfo(1, "right", "test")])
    config = EngineConfig(scale=2, device="cuda", masker=MaskerConfig(name="none"), kernel_estimator="kernelgan",
                          kernelgan=QUICK_KG, zssr=QUICK_ZSSR)
    engine = Engine(config)
    assert engine.device.type == "cuda"
    result = engine.run(lr, region_map=region_map)
    assert result.sr.shape == (256, 256, 3) and result.sr.dtype == np.float32 and np.isfinite(result.sr).all()
    assert 0.0 <= result.sr.min() and result.sr.max() <= 1.0
    assert [r.label for r in result.regions] == [0, 1] and {"kernels", "zssr", "merge"} <= set(result.timings)
    for region in result.regions:
        assert region.kernel.shape == (13, 13) and abs(region.kernel.sum() - 1) < 1e-4
    # The defaults' path: the blur masker and KENet kernels, on CUDA.
    default = Engine(EngineConfig(scale=2, device="cuda", masker=MaskerConfig(name="blur"), zssr=QUICK_ZSSR)).run(bird)
    assert default.sr.shape == (288, 288, 3) and np.isfinite(default.sr).all()
    assert all(r.estimator == "kenet" for r in default.regions)


# ------------------------------------------------------------------------------------------------
# The masked-crop op on the trainers' inputs (tests/test_masked_crop.py covers the op's edge cases)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=lambda d: str(d).split(".")[-1])
def test_masked_crop_on_cuda_matches_the_cpu_on_trainer_inputs(bird, dtype):
    from mkgan_engine.cpp_ext import load_masked_crop, masked_crop_status

    op = load_masked_crop()
    assert op is not None and op.with_cuda, masked_crop_status()
    members = 64
    mask = np.zeros(bird.shape[:2], bool)
    mask[20:130, 50:140] = True
    g_map, _ = sampler.region_crop_maps(bird, mask, 64, 26)
    cdf = sampler.build_cdfs([g_map.prob] * members, bird.shape[:2])
    images = torch.from_numpy(np.ascontiguousarray(bird.transpose(2, 0, 1)))[None].expand(members, -1, -1, -1).to(dtype)
    seeds = torch.arange(members, dtype=torch.int64)
    for step in range(3):  # KernelGAN's generator crops
        u = rng.uniform(seeds.to(CUDA), rng.Stream.CROPS_G, step, (4,))
        crops, centres = gather_crops(images.to(CUDA), cdf.to(CUDA), u, 64)
        want_crops, want_centres = gather_crops_reference(images, cdf, u.cpu(), 64)
        assert torch.equal(centres.cpu(), want_centres) and torch.equal(crops.cpu(), want_crops)
    # ZSSR's fathers: the same centres; the crops equal up to the pyramid's resampling on each device.
    config = ZSSRConfig.preset("fast")
    source = torch.from_numpy(np.ascontiguousarray(bird.transpose(2, 0, 1)))[None].expand(4, -1, -1, -1)
    fathers = {}
    for device in ("cpu", "cuda"):
        canvas = build_father_canvas(father_levels(source.to(device), [None, mask, None, mask], config), 48, 0.9)
        fathers[device] = sample_fathers(canvas, torch.arange(4, device=device), 5, 3, dihedral_permutations(48, torch.device(device)))
    assert torch.equal(fathers["cuda"][1].cpu(), fathers["cpu"][1])
    torch.testing.assert_close(fathers["cuda"][0].cpu(), fathers["cpu"][0], rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# No host synchronisation inside a training step
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("captured", [False, True], ids=["eager", "cuda-graph"])
def test_a_kernelgan_step_does_not_wait_for_the_gpu(bird, captured):
    """No host sync in KernelGAN steps, eager or replayed from a CUDA graph (a random-number window
    refill included), and every step runs exactly once."""
    steps = _gpu_steps()
    batch = steps.kernelgan_batch(bird, 2, KernelGANConfig.preset("paper").with_(cuda_graphs=captured), CUDA)
    for _ in range(batch.runner.warmup + 1):  # the op's build, cuDNN plans, the allocator (and the capture)
        batch.step()
    assert batch.runner.captured == captured
    sites = steps.sync_sites(lambda: [batch.step() for _ in range(batch.window)])
    assert not sites, f"host syncs in {batch.window} KernelGAN steps (site: count): {sites}"
    torch.cuda.set_sync_debug_mode("error")
    try:
        batch.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert batch.steps.tolist() == [batch.window + batch.runner.warmup + 2] * 2


def test_zssr_training_iterations_do_not_wait_for_the_gpu(bird):
    """ZSSR syncs once per learning-rate check by design; none may come with each iteration."""
    steps = _gpu_steps()
    train = steps.zssr_runner(bird, 2, ZSSRConfig.preset("paper"), CUDA)
    train(5)  # warm-up
    per_iteration = steps.per_iteration_sync_sites(train, 5, 10)
    assert not per_iteration, f"host syncs per ZSSR iteration (site: syncs per iteration): {per_iteration}"


# ------------------------------------------------------------------------------------------------
# KernelGAN's training step as a CUDA graph (KernelGANConfig.cuda_graphs)
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def deterministic_cudnn():
    """cuDNN's deterministic algorithms (no atomics-based backward), restored afterwards: two eager
    runs then agree bit for bit, so captured == eager is a bitwise question."""
    saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    yield
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved


def record_step_runners(monkeypatch, module: ModuleType) -> list[graphs.StepRunner]:
    """The list every :class:`graphs.StepRunner` that ``module`` makes from now on is appended to."""
    runners: list[graphs.StepRunner] = []

    class Recording(graphs.StepRunner):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            runners.append(self)

    monkeypatch.setattr(module, "StepRunner", Recording)
    return runners


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=lambda d: str(d).split(".")[-1])
def test_captured_kernelgan_steps_equal_eager_steps(bird, monkeypatch, deterministic_cudnn, dtype):
    """30 iterations with ``cuda_graphs=True`` (3 eager warm-up steps on a side stream, the capture
    and its replay, then replays; random-number windows refilled every 10 steps between replays, two
    checks) give the kernels and loss history of eager steps, bit for bit, and a graph was really
    captured and replayed."""
    runners = record_step_runners(monkeypatch, kernelgan)
    image = bird[:96, :112]
    mask = np.zeros(image.shape[:2], bool)
    mask[:, 40:] = True

    def run(config: KernelGANConfig) -> list:
        return estimate_kernels([image, image], [None, mask], config, [3, 11], device="cuda", check_every=15, dtype=dtype)

    eager = [run(QUICK_KG), run(QUICK_KG)]
    captured = run(QUICK_KG.with_(cuda_graphs=True))
    graph_runners = [r for r in runners if r.capture]  # one per batch (re)build
    assert graph_runners and graph_runners[0].captured, "no CUDA graph was captured"
    assert sum(r.calls for r in graph_runners) == max(e.iterations for e in captured)  # one call per iteration
    eager_reproducible = all(np.array_equal(a.raw_kernel, b.raw_kernel) for a, b in zip(*eager))
    for i, (c, e) in enumerate(zip(captured, eager[0])):
        note = f"member {i}; two eager runs {'agree' if eager_reproducible else 'differ as well'}"
        assert (c.status, c.restarts, c.iterations) == (e.status, e.restarts, e.iterations), note
        assert np.array_equal(c.raw_kernel, e.raw_kernel), f"raw kernels differ by {np.abs(c.raw_kernel - e.raw_kernel).max():.3g}; {note}"
        assert np.array_equal(c.kernel, e.kernel), note
        for key in e.history:
            assert np.array_equal(c.history[key], e.history[key]), f"history {key}; {note}"


@pytest.mark.parametrize("amp", [False, True], ids=["float32", "bf16"])
def test_captured_zssr_steps_equal_eager_steps(bird, monkeypatch, deterministic_cudnn, amp):
    """ZSSR with ``cuda_graphs=True``: the training step captured once per batch (re)build and
    replayed, the random-number windows refilled in place between replays, members frozen at lr 0
    (fixed batch size on CUDA) - the same SR images, iterations and learning rates as eager steps."""
    import mkgan_engine.train.zssr as zssr

    runners = record_step_runners(monkeypatch, zssr)
    lr = bird[100:164, 80:144]
    kernels = [anisotropic_gaussian(13, 2.0, 0.8, 0.4, 2), anisotropic_gaussian(13, 1.0, 1.5, 2.0, 2)]
    mask = np.zeros(lr.shape[:2], bool)
    mask[4:60, 20:64] = True
    config = QUICK_ZSSR.with_(iterations=48, amp=amp, lr_min=5e-5)

    def run(cfg: ZSSRConfig):
        return run_zssr(lr, kernels, 2, cfg, masks=[None, mask], seeds=[7, 123], device="cuda")

    eager = run(config)
    captured = run(config.with_(cuda_graphs=True))
    graph_runners = [r for r in runners if r.capture]
    assert graph_runners and graph_runners[0].captured, "no CUDA graph was captured"
    assert [m.iterations for m in captured.members] == [m.iterations for m in eager.members]
    assert [m.final_lr for m in captured.members] == [m.final_lr for m in eager.members]
    for c, e in zip(captured.images, eager.images):
        np.testing.assert_allclose(c, e, rtol=0, atol=1e-6)
