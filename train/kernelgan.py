"""KernelGAN trainer and public API: one x2 SR kernel per member (region, image or seed).

M members train together along a leading member dimension: every tensor of the generator,
discriminator, optimiser and schedule is shaped (M, ...), random numbers come from the counter-based
:mod:`rng` keyed by (member seed, stream, member iteration), and all losses are per member. A member
therefore gets the same kernel whether it trains alone or in a batch.

Per iteration (all on the images' device, no host synchronisation): draw one 64-px generator crop
and one 26-px discriminator crop per member from the region-aware maps (:mod:`sampler`,
:func:`masked_crop.gather_crops`); one generator step (adversarial L1 + DownScaleLoss + kernel
regularisers, :mod:`losses`), one discriminator step (real/fake crops with N(0, noise) added to a
copy), per-member Adam (:class:`members.MemberAdam`) and schedule update (:mod:`schedule`). The
crop uniforms and the noise of ``DEFAULT_WINDOW`` iterations are drawn in one go (:mod:`rng`
windows, the same numbers as per-iteration draws), and an iteration changes its state only in
place, so on CUDA it can be captured once in a CUDA graph and replayed (``config.cuda_graphs``,
:mod:`graphs`; off by default until measured on a GPU).

Every ``check_every`` iterations (and when a member finishes) the kernels and losses come to the
host once: the loss history is sampled, and a member whose loss went non-finite or whose kernel
collapsed (to a delta, to noise, or flat) restarts from scratch with a new seed, up to
``config.max_restarts`` times, in its batch slot. A finished member's result is recorded and its
slot frozen (learning rate 0); the batch is rebuilt without frozen slots once they are
``COMPACT_SHARE`` of it (by default at once, which keeps float32 results independent of when
members finish). Restarts are logged and recorded in :class:`KernelEstimate`. The
kernel's shape is judged only once the member's regularisers (centralisation, sparsity) have been on
for ``config.bicubic_decay_every`` iterations, and at the end: before that a deep-linear kernel
routinely has much negative mass - the textbook loop (``benchmarks/reference_loop.py``) shows it
for its first 400 iterations on a wide kernel and recovers by itself (``docs/kernel-estimation.md``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from . import losses, rng, sampler
from .config import KernelGANConfig
from .discriminator import BatchedDiscriminator
from .generator import create_generator, output_size, receptive_field
from .graphs import StepRunner
from .kernel import finalize_kernel, kernel_moments, sf_center
from .masked_crop import gather_crops
from .members import MemberAdam, compact
from .schedule import Schedule

logger = logging.getLogger(__name__)

SCALE = 2
DEFAULT_CHECK_EVERY = 50
DEFAULT_WINDOW = 10  # steps whose random numbers are drawn in one go (_Batch.draw_window)
# Rebuild the batch without its frozen slots once they are this share of the slots. 0: at every check
# where a member finished, as if members left at once. Keeping frozen slots (a share > 0) saves
# rebuilds (and CUDA-graph captures) but changes float32 numbers: the grouped convolutions' CPU
# kernels round differently for 1-2 members than for 3 or more (float64 is unaffected; measured with
# tests/test_kernelgan.py::test_windows_and_frozen_slots_give_the_per_step_results), and a KernelGAN
# batch rebuilds rarely (members finish apart only after restarts), so the default keeps the numbers.
COMPACT_SHARE = 0.0
# Collapse detection on the raw kernel (see diagnose_kernel).
DELTA_PEAK_SHARE = 0.85  # one tap holds this share of sum|k|
NOISE_NEGATIVE_SHARE = 0.35  # negative taps hold this share of sum|k|
FLAT_SIGMA = 3.3  # px; a uniform 13x13 kernel has sigma 3.74, the widest DIV2KRK kernel ~2.2


@dataclass
class KernelEstimate:
    """One member's result.

    kernel: float32 13x13 finalised x2 kernel (non-negative, sum 1, centre of mass at the sf-aligned
    centre 6.5), apply by correlation then subsampling by 2; raw_kernel: float32 13x13 effective
    generator kernel before post-processing; seed: the seed asked for; final_seed: the seed of the
    run that produced the kernel (differs after restarts); restarts: how many times the member was
    restarted; iterations: iterations trained over all runs; status: "ok", "collapsed" (restarts
    exhausted, kept the last kernel) or "failed" (non-finite; ``kernel`` is an isotropic Gaussian
    fallback); messages: human-readable notes (restarts, sampler fallbacks, input fixes); history:
    losses sampled every ``check_every`` iterations, arrays keyed "run", "iteration", "loss_g",
    "loss_d", "adversarial", "bicubic", "bicubic_weight"; elapsed_s: wall time of the batch call.
    """

    kernel: np.ndarray
    raw_kernel: np.ndarray
    seed: int
    final_seed: int
    restarts: int
    iterations: int
    status: str
    messages: list[str] = field(default_factory=list)
    history: dict[str, np.ndarray] = field(default_factory=dict)
    elapsed_s: float = 0.0


def prepare_image(image: np.ndarray | torch.Tensor) -> tuple[np.ndarray, list[str]]:
    """Any HxW / HxWxC (C = 1, 2 grey+alpha, 3, 4 RGBA) float image -> a new float32 HxWx3 array in
    [0, 1] (alpha dropped, grey replicated, non-finite values replaced, values clipped) and notes.
    The input is never modified."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    arr = np.array(image, dtype=np.float32, copy=True)
    notes: list[str] = []
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"expected an HxW or HxWxC image with C in 1..4, got shape {np.shape(image)}")
    if arr.shape[2] in (2, 4):
        arr = arr[..., : arr.shape[2] - 1]  # drop alpha
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    bad = ~np.isfinite(arr)
    if bad.any():
        notes.append(f"{int(bad.sum())} non-finite input values replaced (NaN -> 0, +-inf -> 1/0)")
        arr = np.nan_to_num(arr, nan=0.0, posinf=1.0, neginf=0.0)
    if arr.min() < 0.0 or arr.max() > 1.0:
        notes.append(f"input values in [{arr.min():.3g}, {arr.max():.3g}] clipped to [0, 1]")
        arr = np.clip(arr, 0.0, 1.0)
    return np.ascontiguousarray(arr), notes


def fallback_kernel(size: int = 13, variance: float = 1.0) -> np.ndarray:
    """Isotropic Gaussian (variance in px^2) at the sf-aligned centre, sum 1: the kernel reported for
    a member whose training failed."""
    r = np.arange(size) - sf_center(size, SCALE)
    g = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2.0 * variance))
    return (g / g.sum()).astype(np.float32)


def diagnose_kernel(raw: np.ndarray) -> str | None:
    """Why a raw generator kernel (KxK) is unusable, or None: non-finite, vanished, collapsed to a
    delta (one tap holds most of sum|k|), noise (much negative mass) or flat (very wide)."""
    if not np.all(np.isfinite(raw)):
        return "non-finite kernel"
    mass = float(np.abs(raw).sum())
    if mass < 1e-6:
        return "kernel vanished (sum |k| ~ 0)"
    if float(np.abs(raw).max()) / mass > DELTA_PEAK_SHARE:
        return "kernel collapsed to a delta"
    if float(np.clip(-raw, 0, None).sum()) / mass > NOISE_NEGATIVE_SHARE:
        return "kernel collapsed to noise (large negative mass)"
    if float(np.clip(raw, 0, None).sum()) <= 0 or kernel_moments(raw)[0] > FLAT_SIGMA:
        return "kernel collapsed to a flat kernel"
    return None


def _restart_seed(seed: int, restart: int) -> int:
    """Deterministic new seed for the ``restart``-th restart of a member seeded ``seed``."""
    key = torch.tensor([(seed & 0xFFFFFFFF) ^ ((restart * 0x9E3779B9) & 0xFFFFFFFF)], dtype=torch.int64)
    return int(rng.hash32(rng.hash32(key))[0])


@dataclass
class _Record:
    """Host-side bookkeeping of one member (no tensors)."""

    index: int
    seed: int
    current_seed: int
    step: int = 0
    restarts: int = 0
    total_iterations: int = 0
    messages: list[str] = field(default_factory=list)
    history: list[tuple[float, ...]] = field(default_factory=list)
    collapse_reported: bool = False
    start_kernel: np.ndarray | None = None  # hybrid: the KENet kernel every run (restarts too) starts from
    regularisers_on_at: int | None = None  # the run's iteration at which the regularisers were first seen on


class _Batch:
    """The training state of the batch's member slots, all tensors with a leading member dimension M.

    State changes only in place (``copy_``, ``add_``, in-place Adam and schedule updates; restarts
    write into a slot), so :meth:`train_step` can be captured in a CUDA graph and replayed
    (:mod:`graphs`). The random numbers of the next ``window`` steps are drawn at once into buffers
    (:meth:`draw_window`) that :meth:`train_step` indexes with a device counter. A slot whose member
    finished is frozen (:meth:`freeze`: it is still stepped, at learning rate 0) until :meth:`select`
    rebuilds the batch without it; rebuilding rebinds every tensor, so it also makes a new step runner
    (a new graph on CUDA).
    """

    # Everything that has a member dimension (what :meth:`select` compacts).
    MEMBER_STATE = (
        "images", "cdf_g", "cdf_d", "seeds", "steps", "nonfinite", "frozen", "g", "d", "adam_g", "adam_d", "schedule",
        "last",
    )
    # The per-member outputs of the latest step, in the order of the loss history.
    LAST = ("loss_g", "loss_d", "adversarial", "bicubic")

    def __init__(
        self, images: torch.Tensor, cdf_g: torch.Tensor, cdf_d: torch.Tensor, seeds: Sequence[int], config: KernelGANConfig,
        window: int = DEFAULT_WINDOW,
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        device = images.device
        m = len(seeds)
        self.config = config
        self.window = window
        self.images, self.cdf_g, self.cdf_d = images, cdf_g, cdf_d
        self.seeds = torch.tensor([s & 0xFFFFFFFF for s in seeds], dtype=torch.int64, device=device)
        self.steps = torch.zeros(m, dtype=torch.int64, device=device)  # per member, its own clock
        self.nonfinite = torch.zeros(m, dtype=torch.bool, device=device)
        self.frozen = torch.zeros(m, dtype=torch.bool, device=device)  # finished: learning rates 0
        self.g = create_generator(config, seeds, device)
        self.d = BatchedDiscriminator.create(
            seeds, config.d_channels, config.d_kernel_size, config.d_layers - 2, 0.1, device
        )
        if images.dtype != torch.float32:  # float64: exact comparisons in tests
            self.g.flat = self.g.flat.detach().to(images.dtype).requires_grad_(True)
            self.d.flat = self.d.flat.detach().to(images.dtype).requires_grad_(True)
            self.d.vectors = {k: v.to(images.dtype) for k, v in self.d.vectors.items()}
        self.adam_g = MemberAdam([self.g.flat], config.betas)
        self.adam_d = MemberAdam([self.d.flat], config.betas)
        self.schedule = Schedule(config, m, device)
        self.boundary_mask = losses.boundary_mask(receptive_field(config.g_kernel_sizes)).to(images)
        self.d_crop = output_size(config.crop_size, config.g_kernel_sizes)
        # Static output buffers (M,) in the training dtype, filled in place by every step.
        self.last: dict[str, torch.Tensor] = {n: torch.zeros(m, dtype=images.dtype, device=device) for n in self.LAST}
        self._rebuild()

    @property
    def members(self) -> int:
        """M, the number of slots (live and frozen)."""
        return int(self.seeds.shape[0])

    def _rebuild(self) -> None:
        """(Re)allocate the random-number window for the current M and make the step runner."""
        m, d, device = self.members, self.d_crop, self.images.device
        w = self.window
        self.u_g = torch.zeros((w, m, 1), device=device)  # float32 uniforms of the generator crops
        self.u_d = torch.zeros((w, m, 1), device=device)  # ... and of the discriminator crops
        # N(0, d_input_noise_std) noise of the discriminator's real and fake inputs, training dtype.
        self.noise = torch.zeros((w, m, 2, 1, 3, d, d), dtype=self.images.dtype, device=device)
        self.window_pos = torch.zeros(1, dtype=torch.int64, device=device)  # next step's row in the window
        self.window_left = 0  # host count of drawn steps not yet used (0: draw before the next step)
        self.runner = StepRunner(self.train_step, device, capture=self.config.cuda_graphs)

    @torch.no_grad()
    def draw_window(self) -> None:
        """Draw every slot's random numbers for its next ``window`` steps (from its own step counter)
        into the window buffers, in place, and point the window at its first row. Memory:
        ``window * M * (2 * 3 * 26 * 26 + 2)`` numbers (16 KB per member and step in float32)."""
        w, d = self.window, self.d_crop
        self.u_g.copy_(rng.uniform_window(self.seeds, rng.Stream.CROPS_G, self.steps, w, (1,)))
        self.u_d.copy_(rng.uniform_window(self.seeds, rng.Stream.CROPS_D, self.steps, w, (1,)))
        noise = rng.normal_window(self.seeds, rng.Stream.NOISE_D, self.steps, w, (2, 1, 3, d, d))
        self.noise.copy_(noise.to(self.noise.dtype) * self.config.d_input_noise_std)
        self.window_pos.zero_()
        self.window_left = w

    def step(self) -> None:
        """One iteration of every slot: a new random-number window when the drawn one is used up,
        then :meth:`train_step` through the step runner (eager, or a replayed CUDA graph)."""
        if self.window_left == 0:
            self.draw_window()
        self.runner()
        self.window_left -= 1

    def train_step(self) -> None:
        """One generator and one discriminator update for every slot, reading this step's row of the
        random-number window. Changes state only in place and never waits for the device (a CUDA
        graph can record it). Frozen slots train at learning rate 0."""
        c = self.config
        t = self.steps
        row = self.window_pos
        u_g, u_d = self.u_g.index_select(0, row)[0], self.u_d.index_select(0, row)[0]  # (M, 1)
        noise = self.noise.index_select(0, row)[0]  # (M, 2, 1, 3, 26, 26)
        g_in = gather_crops(self.images, self.cdf_g, u_g, c.crop_size)[0][:, 0]  # (M, 3, 64, 64)
        real = gather_crops(self.images, self.cdf_d, u_d, self.d_crop)[0]  # (M, 1, 3, 26, 26)

        # Generator step (D's weights are constants here).
        kernel = self.g.kernel()
        fake = self.g.forward(g_in, kernel)  # (M, 3, 26, 26)
        d_weights = {k: v.detach() for k, v in self.d.normalized_weights(update=True).items()}
        adv = losses.adversarial(self.d.forward(fake[:, None, None], d_weights), 1.0)
        bicubic = losses.downscale_loss(g_in, fake)
        w_cent, w_sparse = self.schedule.regularizer_weights()
        loss_g = (
            adv
            + self.schedule.bicubic_weight * bicubic
            + c.sum2one_weight * losses.sum_to_one(kernel)
            + c.boundaries_weight * losses.boundaries(kernel, self.boundary_mask)
            + w_cent * losses.centralized(kernel, SCALE)
            + w_sparse * losses.sparsity(kernel)
        )
        grads = torch.autograd.grad(loss_g.sum(), [self.g.flat])
        self.adam_g.step([self.g.flat], grads, self._learning_rates(t, c.generator_lr))

        # Discriminator step on noisy copies of the real and (detached) fake crops; one pass, with
        # separate BatchNorm statistics for the real and the fake set.
        d_weights = self.d.normalized_weights(update=True)
        pair = torch.stack((real, fake.detach()[:, None]), dim=1) + noise  # (M, 2, 1, 3, 26, 26)
        d_out = self.d.forward(pair, d_weights)
        loss_d = losses.discriminator_loss(d_out[:, 0], d_out[:, 1])
        grads = torch.autograd.grad(loss_d.sum(), [self.d.flat])
        self.adam_d.step([self.d.flat], grads, self._learning_rates(t, c.lr_d))

        with torch.no_grad():
            bicubic = bicubic.detach()
            self.schedule.update(t, bicubic)
            self.nonfinite |= ~(torch.isfinite(loss_g) & torch.isfinite(loss_d))
            self.steps.add_(1)
            self.window_pos.add_(1)
            for name, value in zip(self.LAST, (loss_g, loss_d, adv, bicubic)):
                self.last[name].copy_(value)

    def _learning_rates(self, iteration: torch.Tensor, base: float) -> torch.Tensor:
        """The schedule's per-slot step sizes float32 (M,), 0 for frozen slots."""
        return torch.where(self.frozen, 0.0, self.schedule.learning_rates(iteration, base))

    @torch.no_grad()
    def snapshot(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(raw kernels (M, K, K), last losses (M, 5) in the history order, non-finite flags (M,)) on the
        host, in one transfer."""
        k = self.g.kernel()
        m = k.shape[0]
        cols = [self.last[n] for n in self.LAST] + [self.schedule.bicubic_weight]
        packed = torch.cat([k.reshape(m, -1).float(), torch.stack(cols, 1).float(), self.nonfinite[:, None].float()], 1).cpu().numpy()
        size = k.shape[-1] ** 2
        return packed[:, :size].reshape(m, k.shape[-1], -1), packed[:, size : size + 5], packed[:, -1] > 0

    def restart(self, member: int, seed: int) -> None:
        """Re-initialise one slot from ``seed`` (its image and crop maps are kept), in place. Its
        step counter and seed change, so the next step draws a new random-number window."""
        self.g.reinit_member(member, seed)
        self.d.reinit_member(member, seed)
        self.adam_g.reset_member(member)
        self.adam_d.reset_member(member)
        self.schedule.reset_member(member)
        self.seeds[member] = seed & 0xFFFFFFFF
        self.steps[member] = 0
        self.nonfinite[member] = False
        self.frozen[member] = False
        self.window_left = 0

    def freeze(self, member: int) -> None:
        """Stop updating one slot's weights (learning rates 0): its member finished."""
        self.frozen[member] = True

    def select(self, index: list[int]) -> None:
        """Keep only the slots at positions ``index`` (new tensors: a new window and step runner)."""
        compact(self, self.MEMBER_STATE, torch.tensor(index, dtype=torch.int64, device=self.images.device))
        self._rebuild()


def _history_arrays(rows: list[tuple[float, ...]]) -> dict[str, np.ndarray]:
    names = ("run", "iteration", "loss_g", "loss_d", "adversarial", "bicubic", "bicubic_weight")
    data = np.asarray(rows, np.float64).reshape(-1, len(names))
    return {n: data[:, i] for i, n in enumerate(names)}


def estimate_kernels(
    images: Sequence[np.ndarray | torch.Tensor],
    masks: Sequence[np.ndarray | None] | None = None,
    config: KernelGANConfig | None = None,
    seeds: Sequence[int] | None = None,
    device: str | torch.device | None = None,
    check_every: int = DEFAULT_CHECK_EVERY,
    dtype: torch.dtype = torch.float32,
    start_kernels: Sequence[np.ndarray] | None = None,
    *,
    _window: int = DEFAULT_WINDOW,
    _compact_share: float = COMPACT_SHARE,
) -> list[KernelEstimate]:
    """Estimate one x2 kernel per member, training all members together.

    images: per member an HxW or HxWxC (C = 1..4) float array in [0, 1] (other ranges are clipped;
    alpha is dropped; the arrays are never modified); masks: per member a bool HxW region to draw
    crops from, or None for the whole image; config: defaults to the ``paper`` preset; seeds: one int
    per member (default 0..M-1); device: where to train (default: a tensor image's device, else CPU);
    check_every: iterations between host-side checks (stability guard, loss-history samples);
    dtype: training precision (float32; float64 for exact comparisons on the CPU); start_kernels:
    per member a 13x13 kernel the ``gaussian`` kernel model starts from (its second moments; the
    ``hybrid`` estimator passes KENet's kernels), else a random start. ``_window`` (steps of random
    numbers drawn at once) and ``_compact_share`` (share of frozen slots that triggers a rebuild; 0:
    at every check where a member finished) change the work, not the numbers: ``_window=1,
    _compact_share=0`` is the per-step, always-compacted reference the tests compare with.
    Raises ValueError for an image smaller than the crop (64 px) or an empty region.
    """
    t0 = time.perf_counter()
    config = config or KernelGANConfig.preset("paper")
    n = len(images)
    if n == 0:
        return []
    masks = list(masks) if masks is not None else [None] * n
    seeds = list(seeds) if seeds is not None else list(range(n))
    if len(masks) != n or len(seeds) != n:
        raise ValueError(f"got {n} images, {len(masks)} masks and {len(seeds)} seeds")
    if device is None:
        device = images[0].device if isinstance(images[0], torch.Tensor) else "cpu"
    device = torch.device(device)
    if check_every < 1:
        raise ValueError("check_every must be >= 1")

    d_crop = output_size(config.crop_size, config.g_kernel_sizes)
    prepared, records, maps_g, maps_d = [], [], [], []
    for i, (image, mask) in enumerate(zip(images, masks)):
        arr, notes = prepare_image(image)
        h, w = arr.shape[:2]
        if h < config.crop_size or w < config.crop_size:
            raise ValueError(
                f"image {i} is {h}x{w}; KernelGAN needs at least {config.crop_size}x{config.crop_size} pixels"
            )
        if mask is not None:
            mask = np.asarray(mask, bool)
            if mask.shape != (h, w):
                raise ValueError(f"mask {i} has shape {mask.shape}, image {i} is {h}x{w}")
            if not mask.any():
                raise ValueError(f"mask {i} is empty: the region has no pixel to draw crops from")
        g_map, d_map = sampler.region_crop_maps(arr, mask, config.crop_size, d_crop)
        notes += [f"generator crops: {g_map.note}"] if g_map.note else []
        notes += [f"discriminator crops: {d_map.note}"] if d_map.note else []
        for note in notes:
            logger.warning("member %d: %s", i, note)
        prepared.append(arr)
        maps_g.append(g_map.prob)
        maps_d.append(d_map.prob)
        records.append(_Record(index=i, seed=int(seeds[i]), current_seed=int(seeds[i]), messages=notes))

    shape = (max(a.shape[0] for a in prepared), max(a.shape[1] for a in prepared))
    stack = np.zeros((n, 3) + shape, np.float32)
    for i, a in enumerate(prepared):
        stack[i, :, : a.shape[0], : a.shape[1]] = a.transpose(2, 0, 1)
    batch = _Batch(
        torch.from_numpy(stack).to(device=device, dtype=dtype),
        sampler.build_cdfs(maps_g, shape, device),
        sampler.build_cdfs(maps_d, shape, device),
        [r.seed for r in records],
        config,
        window=_window,
    )
    if start_kernels is not None:
        if config.kernel_model != "gaussian" or len(start_kernels) != n:
            raise ValueError("start_kernels needs the gaussian kernel model and one kernel per member")
        for i, kernel in enumerate(start_kernels):
            records[i].start_kernel = np.asarray(kernel, np.float32)
            batch.g.start_member_from(i, records[i].start_kernel)
    results: dict[int, KernelEstimate] = {}
    slots: list[_Record | None] = list(records)  # the member at each batch position; None: frozen
    live = list(records)
    while live:
        batch.step()
        for r in live:
            r.step += 1
            r.total_iterations += 1
        if any(r.step % check_every == 0 or r.step >= config.iterations for r in live):
            _check(batch, slots, results, config, check_every, t0)
            slots = _compact(batch, slots, _compact_share)
            live = [r for r in slots if r is not None]
    elapsed = time.perf_counter() - t0
    out = [results[i] for i in range(n)]
    for est in out:
        est.elapsed_s = elapsed
    return out


def _compact(batch: _Batch, slots: list[_Record | None], share: float) -> list[_Record | None]:
    """Rebuild ``batch`` with its live slots only once at least ``share`` of the slots (and at least
    one) are frozen and some are live; returns the slots of the batch as it is then."""
    keep = [pos for pos, r in enumerate(slots) if r is not None]
    frozen = len(slots) - len(keep)
    if frozen == 0 or not keep or frozen < share * len(slots):
        return slots
    batch.select(keep)
    return [slots[pos] for pos in keep]


def _check(
    batch: _Batch, slots: list[_Record | None], results: dict[int, KernelEstimate], config: KernelGANConfig,
    check_every: int, t0: float,
) -> None:
    """Host-side check of every live slot: sample the history, restart or finish members. A finished
    member's result is recorded and its slot frozen (``slots[pos] = None``)."""
    kernels, last, nonfinite = batch.snapshot()
    for pos, r in enumerate(slots):
        if r is None:
            continue
        finished = r.step >= config.iterations
        if not (finished or r.step % check_every == 0):
            continue  # decisions only at the member's own check points (batched == alone)
        r.history.append((float(r.restarts), float(r.step), *map(float, last[pos])))
        raw = kernels[pos]
        reason = "non-finite loss" if nonfinite[pos] else None
        if reason is None and not np.all(np.isfinite(raw)):
            reason = "non-finite kernel"
        if r.regularisers_on_at is None and last[pos][4] < config.regularizers_on_below:
            r.regularisers_on_at = r.step
        settled = r.regularisers_on_at is not None and r.step - r.regularisers_on_at >= config.bicubic_decay_every
        if reason is None and (settled or finished):
            reason = diagnose_kernel(raw)
        if reason is not None and r.restarts < config.max_restarts:
            new_seed = _restart_seed(r.seed, r.restarts + 1)
            msg = f"restart {r.restarts + 1}/{config.max_restarts} at iteration {r.step}: {reason}; new seed {new_seed}"
            logger.warning("member %d (seed %d): %s", r.index, r.seed, msg)
            r.messages.append(msg)
            r.restarts += 1
            r.current_seed = new_seed
            r.step = 0
            r.regularisers_on_at = None
            batch.restart(pos, new_seed)
            if r.start_kernel is not None:
                batch.g.start_member_from(pos, r.start_kernel)
            continue
        failed = reason is not None and reason.startswith("non-finite")
        if reason is not None and not failed and not finished and not r.collapse_reported:
            msg = f"{reason} at iteration {r.step}; no restarts left, training on"
            logger.warning("member %d (seed %d): %s", r.index, r.seed, msg)
            r.messages.append(msg)
            r.collapse_reported = True
        if failed or finished:
            if failed:
                msg = f"{reason} at iteration {r.step} with no restarts left: reporting a Gaussian fallback kernel"
                logger.error("member %d (seed %d): %s", r.index, r.seed, msg)
                r.messages.append(msg)
                kernel, status = fallback_kernel(raw.shape[-1]), "failed"
            else:
                kernel = finalize_kernel(raw, SCALE, config.kernel_keep_top)
                status = "ok" if reason is None else "collapsed"
                if reason is not None:
                    r.messages.append(f"final kernel: {reason}")
            results[r.index] = KernelEstimate(
                kernel=kernel, raw_kernel=raw.astype(np.float32), seed=r.seed, final_seed=r.current_seed,
                restarts=r.restarts, iterations=r.total_iterations, status=status, messages=r.messages,
                history=_history_arrays(r.history), elapsed_s=time.perf_counter() - t0,
            )
            slots[pos] = None
            batch.freeze(pos)


def estimate_kernel(
    image: np.ndarray | torch.Tensor,
    mask: np.ndarray | None = None,
    config: KernelGANConfig | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    check_every: int = DEFAULT_CHECK_EVERY,
) -> KernelEstimate:
    """One member: see :func:`estimate_kernels`."""
    return estimate_kernels([image], [mask], config, [seed], device, check_every)[0]
