"""KernelGAN trainer and public API: one x2 SR kernel per member (region, image or seed).

M members train together along a leading member dimension: every tensor of the generator,
discriminator, optimiser and schedule is shaped (M, ...), random numbers come from the counter-based
:mod:`rng` keyed by (member seed, stream, member iteration), and all losses are per member. A member
therefore gets the same kernel whether it trains alone or in a batch.

Per iteration (all on the images' device, no host synchronisation): draw one 64-px generator crop
and one 26-px discriminator crop per member from the region-aware maps (:mod:`sampler`,
:func:`masked_crop.gather_crops`); one generator step (adversarial L1 + DownScaleLoss + kernel
regularisers, :mod:`losses`), one discriminator step (real/fake crops with N(0, noise) added to a
copy), per-member Adam (:class:`members.MemberAdam`) and schedule update (:mod:`schedule`).

Every ``check_every`` iterations (and when a member finishes) the kernels and losses come to the
host once: the loss history is sampled, and a member whose loss went non-finite or whose kernel
collapsed (to a delta, to noise, or flat) restarts from scratch with a new seed, up to
``config.max_restarts`` times. Restarts are logged and recorded in :class:`KernelEstimate`. The
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
from .kernel import finalize_kernel, kernel_moments, sf_center
from .masked_crop import gather_crops
from .members import MemberAdam, compact
from .schedule import Schedule

logger = logging.getLogger(__name__)

SCALE = 2
DEFAULT_CHECK_EVERY = 50
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
    """The training state of the active members, all tensors with a leading member dimension."""

    # Everything that has a member dimension (what :meth:`select` compacts).
    MEMBER_STATE = (
        "images", "cdf_g", "cdf_d", "seeds", "steps", "nonfinite", "g", "d", "adam_g", "adam_d", "schedule", "last",
    )

    def __init__(
        self, images: torch.Tensor, cdf_g: torch.Tensor, cdf_d: torch.Tensor, seeds: Sequence[int], config: KernelGANConfig
    ) -> None:
        device = images.device
        self.config = config
        self.images, self.cdf_g, self.cdf_d = images, cdf_g, cdf_d
        self.seeds = torch.tensor([s & 0xFFFFFFFF for s in seeds], dtype=torch.int64, device=device)
        self.steps = torch.zeros(len(seeds), dtype=torch.int64, device=device)
        self.nonfinite = torch.zeros(len(seeds), dtype=torch.bool, device=device)
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
        self.schedule = Schedule(config, len(seeds), device)
        self.boundary_mask = losses.boundary_mask(receptive_field(config.g_kernel_sizes)).to(images)
        self.d_crop = output_size(config.crop_size, config.g_kernel_sizes)
        self.last: dict[str, torch.Tensor] = {}

    def step(self) -> None:
        """One generator and one discriminator update for every member (no host synchronisation)."""
        c = self.config
        t = self.steps
        u_g = rng.uniform(self.seeds, rng.Stream.CROPS_G, t, (1,))
        u_d = rng.uniform(self.seeds, rng.Stream.CROPS_D, t, (1,))
        g_in = gather_crops(self.images, self.cdf_g, u_g, c.crop_size)[0][:, 0]  # (M, 3, 64, 64)
        real = gather_crops(self.images, self.cdf_d, u_d, self.d_crop)[0]  # (M, 1, 3, 26, 26)
        noise = rng.normal(self.seeds, rng.Stream.NOISE_D, t, (2, 1, 3, self.d_crop, self.d_crop)).to(real) * c.d_input_noise_std

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
        self.adam_g.step([self.g.flat], grads, self.schedule.learning_rates(t, c.generator_lr))

        # Discriminator step on noisy copies of the real and (detached) fake crops; one pass, with
        # separate BatchNorm statistics for the real and the fake set.
        d_weights = self.d.normalized_weights(update=True)
        pair = torch.stack((real, fake.detach()[:, None]), dim=1) + noise  # (M, 2, 1, 3, 26, 26)
        d_out = self.d.forward(pair, d_weights)
        loss_d = losses.discriminator_loss(d_out[:, 0], d_out[:, 1])
        grads = torch.autograd.grad(loss_d.sum(), [self.d.flat])
        self.adam_d.step([self.d.flat], grads, self.schedule.learning_rates(t, c.lr_d))

        bicubic = bicubic.detach()
        self.schedule.update(t, bicubic)
        self.nonfinite |= ~(torch.isfinite(loss_g.detach()) & torch.isfinite(loss_d.detach()))
        self.steps = t + 1
        self.last = {"loss_g": loss_g.detach(), "loss_d": loss_d.detach(), "adversarial": adv.detach(), "bicubic": bicubic}

    @torch.no_grad()
    def snapshot(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(raw kernels (M, K, K), last losses (M, 5) in the history order, non-finite flags (M,)) on the
        host, in one transfer."""
        k = self.g.kernel()
        m = k.shape[0]
        cols = [self.last[n] for n in ("loss_g", "loss_d", "adversarial", "bicubic")] + [self.schedule.bicubic_weight]
        packed = torch.cat([k.reshape(m, -1).float(), torch.stack(cols, 1).float(), self.nonfinite[:, None].float()], 1).cpu().numpy()
        size = k.shape[-1] ** 2
        return packed[:, :size].reshape(m, k.shape[-1], -1), packed[:, size : size + 5], packed[:, -1] > 0

    def restart(self, member: int, seed: int) -> None:
        """Re-initialise one member from ``seed`` (its image and crop maps are kept)."""
        self.g.reinit_member(member, seed)
        self.d.reinit_member(member, seed)
        self.adam_g.reset_member(member)
        self.adam_d.reset_member(member)
        self.schedule.reset_member(member)
        self.seeds[member] = seed & 0xFFFFFFFF
        self.steps[member] = 0
        self.nonfinite[member] = False

    def select(self, index: list[int]) -> None:
        """Keep only the members at positions ``index``."""
        compact(self, self.MEMBER_STATE, torch.tensor(index, dtype=torch.int64, device=self.images.device))


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
) -> list[KernelEstimate]:
    """Estimate one x2 kernel per member, training all members together.

    images: per member an HxW or HxWxC (C = 1..4) float array in [0, 1] (other ranges are clipped;
    alpha is dropped; the arrays are never modified); masks: per member a bool HxW region to draw
    crops from, or None for the whole image; config: defaults to the ``paper`` preset; seeds: one int
    per member (default 0..M-1); device: where to train (default: a tensor image's device, else CPU);
    check_every: iterations between host-side checks (stability guard, loss-history samples);
    dtype: training precision (float32; float64 for exact comparisons on the CPU); start_kernels:
    per member a 13x13 kernel the ``gaussian`` kernel model starts from (its second moments; the
    ``hybrid`` estimator passes KENet's kernels), else a random start.
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
    )
    if start_kernels is not None:
        if config.kernel_model != "gaussian" or len(start_kernels) != n:
            raise ValueError("start_kernels needs the gaussian kernel model and one kernel per member")
        for i, kernel in enumerate(start_kernels):
            records[i].start_kernel = np.asarray(kernel, np.float32)
            batch.g.start_member_from(i, records[i].start_kernel)
    results: dict[int, KernelEstimate] = {}
    active = list(records)
    while active:
        batch.step()
        for r in active:
            r.step += 1
            r.total_iterations += 1
        if any(r.step % check_every == 0 or r.step >= config.iterations for r in active):
            active = _check(batch, active, results, config, check_every, t0)
    elapsed = time.perf_counter() - t0
    out = [results[i] for i in range(n)]
    for est in out:
        est.elapsed_s = elapsed
    return out


def _check(
    batch: _Batch, active: list[_Record], results: dict[int, KernelEstimate], config: KernelGANConfig,
    check_every: int, t0: float,
) -> list[_Record]:
    """Host-side check of every active member: sample the history, restart or finish members.
    Returns the members still training (and compacts ``batch`` to them)."""
    kernels, last, nonfinite = batch.snapshot()
    keep: list[int] = []
    for pos, r in enumerate(active):
        finished = r.step >= config.iterations
        if not (finished or r.step % check_every == 0):
            keep.append(pos)  # decisions only at the member's own check points (batched == alone)
            continue
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
            keep.append(pos)
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
        else:
            keep.append(pos)
    if len(keep) < len(active):
        if keep:
            batch.select(keep)
    return [active[p] for p in keep]


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
