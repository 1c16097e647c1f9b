"""ZSSR ("zero-shot" super-resolution) with a given kernel, batched over members.

A *member* is one (kernel, region mask, seed) triple - in Multi-KernelGAN one image region with
its own KernelGAN kernel. ``M`` members train together along a leading member dimension (grouped
convolutions, :mod:`zssr_net`), each with its own weights, Adam state, learning-rate policy and
stopping point; one member is a batch of one, and a member trained in a batch gets the same result
as alone with the same seed (all randomness is counter-based per member, :mod:`rng`). Members may
come from different images (:func:`run_zssr_many`, the engine's ``--pack``): their father canvases
are stacked, padded, into one batch, and each member still gets its own image's result.

This module trains the members and runs them; :mod:`zssr_data` makes the father/son pairs,
:mod:`zssr_net` holds the batched network and autocast, :mod:`members` the per-member Adam and the
compaction of a batch, :mod:`zssr_inference` the self-ensemble, tiling and back-projection.

Training (one *step* of scale ``s`` with kernel ``k``; our own implementation of the ZSSR paper):

* Fathers: random ``crop`` x ``crop`` crops (``config.crop_size`` clipped to the image, rounded
  down to a multiple of ``s``) of the image being upscaled. With a region mask the crop centres are
  drawn uniformly over the centres the crop-fit rule allows (:mod:`crop_fit`: centre in the region
  and >= ``config.region_min_inside`` (90 %) of the crop inside it; its fallbacks, the near-best
  in-region centres, then the crops covering the most region pixels, for slivers). With
  ``config.region_share`` < 1 only that share of the crops is drawn this way, the rest uniformly
  over the whole image (a region's net then also sees the rest of the image). Scale jitter: the
  image is also downscaled (bicubic, antialiased) by ``config.scale_jitter_levels``; all levels are
  laid side by side on one *canvas* and the centre map covers all of them, so a level is picked with
  probability proportional to its number of admissible centres (about its area, as in ZSSR) and one
  :func:`masked_crop.gather_crops` call draws every member's crop. Then one of the 8
  flips/rotations. Crops never straddle two levels (centres are restricted to crops that fit).
* Son: the father correlated with the member's kernel and subsampled by ``s``
  (:func:`degradation.blur_downsample`), optional Gaussian noise (``config.noise_std``), bicubic
  upsampling back to the father's size. Loss: L1 between ``net(son_up)`` and the father;
  ``net(x) = x + f(x)``, ``f`` = 8 conv 3x3 layers, 64 channels, ReLU except after the last.
* Learning-rate policy (per member, no host sync between checks): every ``config.rec_every``
  iterations the *reconstruction error* (L1 of ``net(son_up)`` vs the father on ``config.rec_crops``
  fixed crops of the member's own region, drawn once) is written to a device buffer. Every
  ``config.lr_policy_every`` iterations (one host sync), for each member with at least
  ``lr_policy_window`` iterations since its last lr change, a line is fitted to the errors of the
  last window; unless the slope is clearly negative (``-slope > config.lr_slope_ratio * SE(slope)``,
  SE = standard error of the fitted slope, from the residual scatter of the errors - the test ZSSR
  makes), lr /= ``config.lr_decay``. A member stops when ``lr < config.lr_min`` (not before
  ``config.min_iterations``) or at ``config.iterations``; finished members leave the batch (on
  CUDA they first stay in it at lr 0 until half the batch is done, so the batch keeps its size), the
  others continue, and new members may join (:func:`train_pool`: gradual x4's second step of a
  member joins as soon as its first step is done). Every member runs on its own clock - RNG
  counters, Adam steps, checks - so joining changes nothing of what it computes.
* Per step no Python number reaches the device: the RNG counters and Adam's step counts are device
  tensors updated in place, the random numbers of ``RNG_WINDOW`` steps are drawn in one call, and
  the host only looks at the batch at the learning-rate checks.

Inference (per member, :mod:`zssr_inference`): the net on the bicubic-upsampled LR image with a
geometric self-ensemble (per-pixel median over ``config.ensemble`` flips/rotations), then
``config.back_projection_iterations`` of back-projection ``y += up(lr - D_k(y))`` with the member's
kernel - on the tiles that hold the member's region grown by ``config.inference_margin`` LR pixels
(and at least the merge's feather band; every tile without a mask), each with a halo that makes it
equal to one whole pass. Elsewhere the member's output is plain bicubic, where the merge gives it no
weight. Tiles are ``config.tile`` LR pixels, or the largest that fit ``config.max_memory_mb``.

x4 (``config.gradual_x4``, the default): *kernels are the x2 kernels* (what KernelGAN estimates).
Under the analytic model the x4 kernel is ``k * (k dilated by 2)`` (:func:`kernel.analytic_x4`),
i.e. ``LR = D_k(D_k(HR))`` - two identical x2 degradations. So step 1 learns ``LR -> I`` with ``k``
exactly as at x2; step 2 learns ``I -> HR`` with the *same* ``k`` (the degradation ``HR -> I`` is
again ``D_k``), fathers drawn from the member's x2 output ``I`` (its pyramid) and from the real LR
image (a real example of the same relation), sons ``D_k(father)``. Step 2 starts from step 1's
weights (``config.x4_warm_start``; same relation, so it only has to adapt). Its output is
back-projected against ``I`` with ``k`` and finally against the LR image with ``analytic_x4(k)`` (the
whole x4 degradation). With ``kernel_scale=4`` (or ``gradual_x4=False``) one direct x4 step runs
with the given x4 kernel (resp. ``analytic_x4`` of the given x2 kernel). Other integer scales run
one direct step with a kernel for that scale.

Channels: any ``C`` trains one net on all channels (grey ``HxW``/``HxWx1`` and RGB). RGBA: the
colour channels go through ZSSR, alpha is upscaled bicubically (and clipped).

Precision: CUDA runs under ``torch.autocast`` (bfloat16 where supported, else float16 with a fixed
loss scale and non-finite gradients zeroed) when ``config.amp``, channels_last activations; the CPU
runs in float32. Kernels, blurs, resampling and losses are always float32.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import rng
from .config import ZSSRConfig
from .graphs import StepRunner
from .degradation import upsample_to
from .kernel import analytic_x4
from .masked_crop import gather_crops
from .members import MemberAdam, take
from .merge import default_radius
from .zssr_data import (
    Level,
    build_father_canvas,
    dihedral_permutations,
    father_draws,
    father_levels,
    fathers_from_draws,
    make_sons,
    stack_canvases,
)
from .zssr_inference import Box, TilePlan, back_project, plan_tiles, upscale_tiles, upscale_window
from .zssr_net import MemberConvNet, autocast_context

Progress = Callable[[str, int, int], None]  # ("train", iterations done, of this step) or ("tiles", done, in all)

# Step counters of different stages of a gradual run never collide.
_STAGE_STRIDE = 1 << 24
# Random numbers (crop positions, flips, son noise) are drawn for this many steps in one call.
RNG_WINDOW = 16


def align_kernels(kernels: Sequence[np.ndarray]) -> torch.Tensor:
    """Kernels of possibly different sizes -> float32 (M, K, K) with K the largest size, each placed
    so that :func:`blur_downsample` (output pixel j sees input j - (K-1)//2 ...) is unchanged."""
    arrays = [np.asarray(k, np.float32) for k in kernels]
    for k in arrays:
        if k.ndim != 2 or k.shape[0] != k.shape[1]:
            raise ValueError(f"kernels must be square 2-D arrays, got shape {k.shape}")
        if not np.all(np.isfinite(k)) or k.sum() <= 0:
            raise ValueError("kernels must be finite with a positive sum")
    return torch.cat(pad_kernels([torch.from_numpy(k / k.sum())[None] for k in arrays]))


def pad_kernels(kernels: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Kernel stacks (m, K, K) of possibly different K, zero-padded to the largest K with each
    kernel placed so that :func:`blur_downsample` (output pixel j sees input j - (K-1)//2 ...) is
    unchanged - the one placement rule of :func:`align_kernels` and of a batch's kernels."""
    size = max(k.shape[-1] for k in kernels)
    out = []
    for k in kernels:
        d = (size - 1) // 2 - (k.shape[-1] - 1) // 2
        out.append(F.pad(k, (d, size - k.shape[-1] - d, d, size - k.shape[-1] - d)))
    return out


# ------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------
@dataclass
class StageInfo:
    """One member's training in one step: iterations run, final lr, mean training L1 over the last
    ``lr_policy_window`` iterations, last reconstruction error, the centre rule used."""

    iterations: int
    final_lr: float
    loss: float
    rec_error: float
    rule: str


def _slope_and_se(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    x = x.astype(np.float64)
    y = y.astype(np.float64)
    xm = x - x.mean()
    sxx = float((xm**2).sum())
    slope = float((xm * (y - y.mean())).sum() / sxx)
    resid = y - y.mean() - slope * xm
    dof = max(1, len(x) - 2)
    se = math.sqrt(float((resid**2).sum()) / dof / sxx)
    return slope, se


@dataclass
class Joiner:
    """Members of one image that join a training batch (:func:`train_pool`): its father ``levels``
    (see :func:`build_father_canvas`; the first is the image being upscaled, the tensors hold these
    members), kernels (m, K, K), seeds and the caller's ids, the training ``stage`` (0, or 1 for
    gradual x4's second step: its own RNG counters and initialisation) and the nets to start from
    (``init``, m members; None: initialised from the seeds)."""

    levels: Sequence[Level]
    kernels: torch.Tensor
    seeds: list[int]
    ids: list[Any]
    stage: int = 0
    init: MemberConvNet | None = None


@dataclass
class _Slot:
    """Host bookkeeping of one member in the batch: the caller's id, the global iteration it joined
    at (its own clock is the global one minus that), its learning rate, the own iteration of its last
    lr change, how many reconstruction errors it has, its centre rule."""

    id: Any
    joined: int
    lr: float
    rule: str
    last_change: int = 0
    recs: int = 0


Finished = tuple[Any, StageInfo, MemberConvNet]
"""(the caller's id, the member's training, its trained net as a one-member net)."""

_BATCH_STATE = ("canvas", "net", "kernels", "seeds", "keys", "rec_sons", "rec_fathers", "rec_buf", "loss_hist", "lr")


def train_pool(
    joiners: Sequence[Joiner],
    scale: int,
    config: ZSSRConfig,
    crop_size: int,
    on_finish: Callable[[list[Finished]], Sequence[Joiner]] | None = None,
    progress: Callable[[int, int], None] | None = None,
    freeze_finished: bool | None = None,
) -> int:
    """Train members at ``scale`` on ``crop_size`` fathers until every member - and every member
    ``on_finish`` adds - has finished; returns the batched iterations run.

    Every member has its own clock, learning-rate policy and stopping point (module docstring) and
    gets what it gets alone. ``on_finish(finished)`` receives the members that finished at a
    learning-rate check (their nets; :data:`Finished`) and may return new :class:`Joiner` s: they
    join the running batch at the next check on a multiple of ``config.lr_policy_every`` (their
    clocks then keep the batch's rhythm of checks), so the batch refills as it empties.
    ``progress(done, total)``: the furthest member's iterations, at each check.

    The state is updated in place with device step counters (no Python number enters a step). With
    ``freeze_finished`` a finished member stays in the batch at learning rate 0 until half the batch
    is frozen or members join (fewer rebuilds of a fixed-size batch, what a captured CUDA graph
    needs), else it leaves at once. Default: freeze on CUDA only (on the CPU a frozen member would
    still cost its share of the compute).
    """
    if not joiners:
        return 0
    device = joiners[0].levels[0][0].device
    cs = crop_size
    perms = dihedral_permutations(cs, device)
    autocast, loss_scale = autocast_context(device, config)
    freeze = device.type == "cuda" if freeze_finished is None else freeze_finished
    if config.iterations < 1:
        raise ValueError("ZSSR needs at least one iteration")
    rec_every = max(1, config.rec_every)
    every = config.lr_policy_every
    rhythm = math.lcm(every, rec_every)  # members join on multiples: their checks and measurements stay in step
    n_rec = max(1, config.rec_crops)
    rec_slots = config.iterations // rec_every + 1
    window = config.lr_policy_window
    noise_std = float(config.noise_std)
    shave = min(config.depth, cs // 4)
    checks = {config.min_iterations, config.iterations}

    slots: list[_Slot | None] = []  # one per batch position; None: frozen
    batch: dict[str, Any] = {}  # _BATCH_STATE, each with a leading member dimension
    draws: list[torch.Tensor] = []  # this window's random numbers (W, M, ...)
    window_pos = torch.zeros(1, dtype=torch.int64, device=device)  # the next step's row of the window
    window_left = 0  # steps left in the drawn window (0: draw before the next step)
    runner: StepRunner | None = None

    def part(j: Joiner) -> dict[str, Any]:
        """The batch state of one joiner's members."""
        m = len(j.seeds)
        seeds = torch.as_tensor(j.seeds, dtype=torch.int64, device=device)
        step0 = torch.full((m,), j.stage * _STAGE_STRIDE, dtype=torch.int64, device=device)
        canvas = build_father_canvas(j.levels, cs, config.region_min_inside, config.region_share)
        rec_canvas = build_father_canvas(j.levels[:1], cs, config.region_min_inside)
        u = rng.uniform(seeds, rng.Stream.ZSSR_REC, step0, (n_rec,))
        rec_fathers, _ = gather_crops(rec_canvas.images, rec_canvas.cdf, u, cs)
        kernels = j.kernels.to(device)
        if j.init is None:
            stream = rng.Stream.ZSSR_INIT + rng.ZSSR_STAGE_STRIDE * j.stage
            net = MemberConvNet.initialise(j.seeds, canvas.images.shape[1], config.channels, config.depth, stream, device)
        else:
            net = MemberConvNet.cat([j.init])
        return {"canvas": canvas, "net": net, "kernels": kernels, "seeds": seeds, "keys": step0,
                "rec_sons": make_sons(rec_fathers, kernels, scale), "rec_fathers": rec_fathers,
                "rec_buf": torch.zeros((m, rec_slots), device=device), "loss_hist": torch.zeros((m, max(1, window)), device=device),
                "lr": torch.full((m,), config.lr, device=device)}

    def rebuild(keep: list[int], new: Sequence[Joiner], t: int) -> None:
        """The batch of the members at positions ``keep`` plus the ``new`` ones (joining at global
        iteration ``t``); a new random-number window and step runner (new tensors: capture again)."""
        nonlocal slots, draws, window_left, runner
        parts = []
        if keep:
            index = torch.as_tensor(keep, device=device)
            parts.append({k: take(batch[k], index) for k in _BATCH_STATE})
        fresh = [part(j) for j in new]
        parts += fresh
        batch["canvas"] = stack_canvases([p["canvas"] for p in parts])
        batch["net"] = MemberConvNet.cat([p["net"] for p in parts]).requires_grad_(True)
        batch["kernels"] = torch.cat(pad_kernels([p["kernels"] for p in parts]))
        for k in ("seeds", "keys", "rec_sons", "rec_fathers", "rec_buf", "loss_hist", "lr"):
            batch[k] = torch.cat([p[k] for p in parts])
        params = batch["net"].parameters()
        batch["opt"] = batch["opt"].select(index).extend(params) if keep else MemberAdam(params, bias_dtype=torch.float64)
        slots = [slots[i] for i in keep] + [_Slot(i, t, config.lr, rule) for j, p in zip(new, fresh)
                                            for i, rule in zip(j.ids, p["canvas"].rules)]
        window_left = 0
        runner = StepRunner(train_step, device, capture=config.cuda_graphs)

    def draw_window() -> list[torch.Tensor]:
        """The random numbers of every member's next ``RNG_WINDOW`` steps, (W, M, ...) each: crop
        positions, flips/rotations and (with ``noise_std``) the sons' noise."""
        keys, seeds = batch["keys"] + 1, batch["seeds"]
        out = list(father_draws(seeds, keys, RNG_WINDOW, config.batch_size))
        if noise_std > 0:
            c = batch["canvas"].images.shape[1]
            shape = (config.batch_size * c, math.ceil(cs / scale), math.ceil(cs / scale))
            out.append(noise_std * rng.normal_window(seeds, rng.Stream.ZSSR_NOISE, keys, RNG_WINDOW, shape))
        return out

    def train_step() -> None:
        """One iteration of every member, in place on the batch state (graph-capturable)."""
        net, keys = batch["net"], batch["keys"]
        keys.add_(1)
        now = [d.index_select(0, window_pos)[0] for d in draws]
        window_pos.add_(1)
        fathers, _ = fathers_from_draws(batch["canvas"], now[0], now[1], perms)
        sons = make_sons(fathers, batch["kernels"], scale, now[2] if noise_std > 0 else None)
        with autocast:
            out = net(sons)
        loss_m = (out.float() - fathers).abs().mean(dim=(1, 2, 3, 4))
        grads = torch.autograd.grad(loss_m.sum() * loss_scale, net.parameters())
        if loss_scale != 1.0:
            grads = [torch.nan_to_num(g.float() / loss_scale, nan=0.0, posinf=0.0, neginf=0.0) for g in grads]
        batch["opt"].step(net.parameters(), grads, batch["lr"])
        column = (keys % _STAGE_STRIDE).remainder(batch["loss_hist"].shape[1])[:, None]  # own iteration mod window
        batch["loss_hist"].scatter_(1, column, loss_m.detach()[:, None])

    rebuild([], list(joiners), 0)
    pending: list[Joiner] = []
    t = 0
    while slots or pending:
        if not any(s is not None for s in slots):  # empty: the joiners start now, on the rhythm
            t = -(-t // rhythm) * rhythm
            rebuild([], pending, t)
            pending = []
        t += 1
        if window_left == 0:
            fresh = draw_window()
            if len(draws) == len(fresh) and all(d.shape == f.shape for d, f in zip(draws, fresh)):
                for d, f in zip(draws, fresh):
                    d.copy_(f)  # in place: a captured step reads these buffers
            else:
                draws = fresh
            window_pos.zero_()
            window_left = RNG_WINDOW
        runner()
        window_left -= 1
        own = [None if s is None else t - s.joined for s in slots]

        if t % rec_every == 0:
            net, rec_sons, rec_fathers = batch["net"], batch["rec_sons"], batch["rec_fathers"]
            with torch.no_grad(), autocast:
                rec_out = net(rec_sons)
            diff = (rec_out.float() - rec_fathers)[..., shave : cs - shave, shave : cs - shave]
            columns = torch.as_tensor([min(0 if s is None else s.recs, rec_slots - 1) for s in slots], device=device)
            batch["rec_buf"].scatter_(1, columns[:, None], diff.abs().mean(dim=(1, 2, 3, 4))[:, None])
            for s in slots:
                if s is not None:
                    s.recs += 1

        policy = t % every == 0
        if not (policy or any(o in checks for o in own if o is not None)):
            continue
        # ---- one host sync: learning-rate policy and stopping ----
        if progress is not None:
            progress(max(o for o in own if o is not None), config.iterations)
        rec_host = batch["rec_buf"].cpu().numpy()
        for i, s in enumerate(slots):
            if s is None or own[i] % every or own[i] - s.last_change < window:
                continue
            iters = rec_every * np.arange(1, s.recs + 1)
            sel = (iters > own[i] - window) & (iters > s.last_change)
            if sel.sum() >= 3:
                slope, se = _slope_and_se(iters[sel], rec_host[i, : s.recs][sel])
                if not (-slope > config.lr_slope_ratio * se):
                    s.lr /= config.lr_decay
                    s.last_change = own[i]
        done = [i for i, s in enumerate(slots) if s is not None and (
            own[i] >= config.iterations or (s.lr < config.lr_min and own[i] >= config.min_iterations))]
        if done:
            loss_host = batch["loss_hist"].mean(1).cpu().numpy()
            finished = []
            for i in done:
                s = slots[i]
                rec_last = float(rec_host[i, s.recs - 1]) if s.recs else float("nan")
                finished.append((s.id, StageInfo(own[i], s.lr, float(loss_host[i]), rec_last, s.rule), batch["net"].select([i])))
                slots[i] = None
            if on_finish is not None:
                pending += list(on_finish(finished))
        live = [i for i, s in enumerate(slots) if s is not None]
        if not live:
            slots = []  # the pending joiners (if any) start at the next step on the rhythm
            continue
        if (pending and t % rhythm == 0) or (done and (not freeze or 2 * len(live) <= len(slots))):
            joining = pending if t % rhythm == 0 else []
            rebuild(live, joining, t)
            pending = pending[len(joining):]
        batch["lr"].copy_(torch.tensor([0.0 if s is None else s.lr for s in slots], dtype=torch.float32))
    return t


def train_members(
    sources: Sequence[Sequence[Level]],
    kernels: torch.Tensor,
    scale: int,
    config: ZSSRConfig,
    seeds: Sequence[int],
    crop_size: int,
    stage: int = 0,
    init: MemberConvNet | None = None,
    progress: Callable[[int, int], None] | None = None,
    freeze_finished: bool | None = None,
) -> tuple[MemberConvNet, list[StageInfo], int]:
    """Train M members together (one :func:`train_pool` batch) with kernels (M, K, K) at ``scale``
    on fathers from ``sources``: one list of levels per image, members in order. Returns the trained
    net (all members), per-member info and the number of batched iterations run."""
    joiners, first = [], 0
    for levels in sources:
        m = levels[0][0].shape[0]
        members = list(range(first, first + m))
        joiners.append(Joiner(levels, kernels[first : first + m], [int(seeds[i]) for i in members], members, stage,
                              None if init is None else init.select(members)))
        first += m
    nets: dict[int, MemberConvNet] = {}
    infos: dict[int, StageInfo] = {}

    def collect(finished: list[Finished]) -> list[Joiner]:
        for i, info, net in finished:
            infos[i], nets[i] = info, net
        return []

    iterations = train_pool(joiners, scale, config, crop_size, collect, progress, freeze_finished)
    return MemberConvNet.cat([nets[i] for i in range(first)]), [infos[i] for i in range(first)], iterations


# ------------------------------------------------------------------------------------------------
# Public API
# ------------------------------------------------------------------------------------------------
@dataclass
class MemberInfo:
    """Per member: one :class:`StageInfo` per SR step (two for gradual x4), and the inference tiles
    it ran (per step) with their side in LR pixels."""

    stages: list[StageInfo] = field(default_factory=list)
    tiles: list[int] = field(default_factory=list)
    tile: int = 0

    @property
    def iterations(self) -> int:
        return sum(s.iterations for s in self.stages)

    @property
    def final_lr(self) -> float:
        return self.stages[-1].final_lr

    @property
    def loss(self) -> float:
        return self.stages[-1].loss


@dataclass
class ZSSRResult:
    """images: one float32 (sH, sW[, C]) array in [0, 1] per member; members: per-member info;
    iterations: batched training iterations run (all steps); seconds: wall time of the call;
    train_seconds: of which training; iterations_per_second = iterations / train_seconds."""

    images: list[np.ndarray]
    members: list[MemberInfo]
    iterations: int
    seconds: float
    train_seconds: float

    @property
    def iterations_per_second(self) -> float:
        return self.iterations / max(self.train_seconds, 1e-9)


def _crop_size(config: ZSSRConfig, shape: tuple[int, int], scale: int) -> int:
    cs = min(config.crop_size, shape[0], shape[1])
    cs -= cs % scale
    if cs < 2 * scale:
        raise ValueError(f"image {shape} too small for ZSSR at x{scale}")
    return cs


def _window_sr(net: MemberConvNet, lr: torch.Tensor, kernel: torch.Tensor, scale: int, config: ZSSRConfig, box: Box) -> torch.Tensor:
    """One member's SR (1, C, s*h, s*w) of the LR window ``box`` of lr (1, C, H, W)."""
    y0, y1, x0, x1 = box
    return upscale_window(net, lr[..., y0:y1, x0:x1], kernel, scale, config)


def _window_sr_x4_step2(
    net: MemberConvNet, mid: torch.Tensor, lr: torch.Tensor, kernel: torch.Tensor, kernel_x4: torch.Tensor,
    config: ZSSRConfig, box: Box,
) -> torch.Tensor:
    """Gradual x4, step 2, for the LR window ``box``: the x2 net on the member's x2 image ``mid``
    (1, C, 2H, 2W) back-projected against it with ``kernel``, then against lr with ``kernel_x4``."""
    y0, y1, x0, x1 = box
    sr = upscale_window(net, mid[..., 2 * y0 : 2 * y1, 2 * x0 : 2 * x1], kernel, 2, config)
    return back_project(sr, lr[..., y0:y1, x0:x1], kernel_x4, 4, config.back_projection_iterations)


def train_on_image(
    lr: torch.Tensor,
    kernels: torch.Tensor,
    scale: int,
    config: ZSSRConfig,
    masks: Sequence[np.ndarray | None],
    seeds: Sequence[int],
    progress: Callable[[int, int], None] | None = None,
) -> tuple[MemberConvNet, list[StageInfo], int]:
    """The first (at x2 the only) training step: M members learn ``lr`` (1, C, h, w) -> x``scale``
    from fathers of lr and its pyramid (member i's from ``masks[i]``, bool h x w or None) with
    kernels (M, K, K) (:func:`align_kernels`). Returns (net, per-member info, iterations run); the
    nets then run with :func:`zssr_inference.upscale_window` on any window of lr."""
    source = lr.expand(len(seeds), -1, -1, -1)
    crop = _crop_size(config, tuple(lr.shape[-2:]), scale)
    return train_members([father_levels(source, masks, config)], kernels, scale, config, seeds, crop, progress=progress)


@dataclass(frozen=True)
class ZSSRJob:
    """One image and its members for :func:`run_zssr_many`: image float32 HxW or HxWxC in [0, 1];
    kernels, masks (bool HxW LR regions, None = the whole image) and seeds: one per member (default
    masks: None; default seeds: 0..M-1)."""

    image: np.ndarray
    kernels: Sequence[np.ndarray]
    masks: Sequence[np.ndarray | None] | None = None
    seeds: Sequence[int] | None = None


@dataclass
class _Image:
    """A job made ready on the device: lr (1, C, h, w) (colour channels), alpha float32 (h, w, 1) or
    None, grey2d (the input was HxW), the given kernels (float32 arrays), masks and seeds per member,
    k_step / k_given / k4 aligned (M, K, K) (the step-1 kernels, the given ones, gradual x4's whole
    degradation), and the tile plan."""

    lr: torch.Tensor
    alpha: np.ndarray | None
    grey2d: bool
    kernels: list[np.ndarray]
    masks: list[np.ndarray | None]
    seeds: list[int]
    k_step: torch.Tensor
    k_given: torch.Tensor
    k4: torch.Tensor | None
    plan: TilePlan

    @property
    def members(self) -> int:
        return len(self.kernels)

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.lr.shape[-2]), int(self.lr.shape[-1])


def _prepare(job: ZSSRJob, scale: int, config: ZSSRConfig, device: torch.device, step_kernel: Callable[[np.ndarray], np.ndarray],
             gradual: bool) -> _Image:
    """Check one job and move it to the device (grey -> one channel, RGBA -> RGB + alpha)."""
    img = np.asarray(job.image, np.float32)
    grey2d = img.ndim == 2
    if grey2d:
        img = img[..., None]
    if img.ndim != 3:
        raise ValueError(f"image must be HxW or HxWxC, got {np.shape(job.image)}")
    alpha = None
    if img.shape[2] == 4:
        alpha, img = img[..., 3:], img[..., :3]
    h, w = img.shape[:2]
    m = len(job.kernels)
    if m == 0:
        raise ValueError("no kernels given")
    masks = [None] * m if job.masks is None else list(job.masks)
    seeds = list(range(m)) if job.seeds is None else [int(s) for s in job.seeds]
    if len(masks) != m or len(seeds) != m:
        raise ValueError("kernels, masks and seeds must have one entry per member")
    for mk in masks:
        if mk is not None and np.asarray(mk).shape != (h, w):
            raise ValueError(f"mask shape {np.asarray(mk).shape} != image shape {(h, w)}")
    kernels = [np.asarray(k, np.float32) for k in job.kernels]
    k_given = align_kernels(kernels)
    k_step = align_kernels([step_kernel(k) for k in kernels])
    k4 = align_kernels([analytic_x4(k) for k in kernels]).to(device) if gradual else None
    margin = max(config.inference_margin, math.ceil(default_radius((h * scale, w * scale), scale) / scale) + 1)
    plan = plan_tiles(masks, (h, w), scale, margin, config, k_step.shape[-1], None if k4 is None else k4.shape[-1], img.shape[2])
    lr = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).to(device)[None]
    return _Image(lr, alpha, grey2d, kernels, masks, seeds, k_step, k_given, k4, plan)


def _to_array(out: torch.Tensor, image: _Image) -> np.ndarray:
    """One member's SR (1, C, sH, sW) -> float32 (sH, sW[, C]) in the job's channel layout (alpha
    upscaled bicubically and clipped, grey back to HxW)."""
    arr = out[0].float().cpu().numpy().transpose(1, 2, 0)
    if image.alpha is not None:
        a = upsample_to(torch.from_numpy(np.ascontiguousarray(image.alpha.transpose(2, 0, 1)))[None], arr.shape[:2])
        arr = np.concatenate([arr, a[0].numpy().transpose(1, 2, 0).clip(0, 1)], axis=2)
    if image.grey2d:
        arr = arr[..., 0]
    return np.ascontiguousarray(arr, dtype=np.float32)


def run_zssr(
    image: np.ndarray,
    kernels: Sequence[np.ndarray],
    scale: int,
    config: ZSSRConfig | None = None,
    masks: Sequence[np.ndarray | None] | None = None,
    seeds: Sequence[int] | None = None,
    device: str | torch.device = "cpu",
    kernel_scale: int | None = None,
    progress: Progress | None = None,
) -> ZSSRResult:
    """Super-resolve ``image`` (float32 HxW or HxWxC in [0, 1]) once per member.

    kernels: one per member; for ``scale == 4`` these are the *x2* kernels (gradual x4, see the module
    docstring) unless ``kernel_scale=4`` says they are x4 kernels (then one direct x4 step); for other
    scales, kernels for that scale. masks: one bool HxW (LR) region per member or None (whole image);
    seeds: one int per member (default 0..M-1); progress: optional ``callback(phase, done, total)``:
    ("train", iterations done, of the current step's) at each learning-rate check, ("tiles", done,
    in all) after each inference tile. Returns a :class:`ZSSRResult`.
    """
    return run_zssr_many([ZSSRJob(image, kernels, masks, seeds)], scale, config, device, kernel_scale, progress)[0]


def run_zssr_many(
    jobs: Sequence[ZSSRJob],
    scale: int,
    config: ZSSRConfig | None = None,
    device: str | torch.device = "cpu",
    kernel_scale: int | None = None,
    progress: Progress | None = None,
) -> list[ZSSRResult]:
    """Super-resolve several images, each once per member, with the members of all images training
    together (:func:`run_zssr` is one job; see it for the arguments).

    Images with the same channel count and crop sizes form one member batch: their father canvases
    are stacked (:func:`zssr_data.stack_canvases`), every member keeps its own crops, kernel, seed,
    learning-rate policy and stopping point, so it gets what its image's own :func:`run_zssr` call
    gives it (kernels of one size, as the engine's are). Returns one :class:`ZSSRResult` per job,
    in order; its iterations and seconds are those of the batch the image trained in. Progress:
    "train" per batch and step, "tiles" over all jobs.
    """
    config = config or ZSSRConfig.preset("fast")
    device = torch.device(device)
    if not jobs:
        return []
    if kernel_scale is None:
        kernel_scale = 2 if scale == 4 else scale
    if kernel_scale not in (scale, 2) or (kernel_scale == 2 and scale not in (2, 4)):
        raise ValueError(f"kernel_scale {kernel_scale} does not fit scale {scale}")
    gradual = scale == 4 and kernel_scale == 2 and config.gradual_x4

    def step_kernel(k: np.ndarray) -> np.ndarray:
        return analytic_x4(k) if scale == 4 and kernel_scale == 2 and not gradual else k

    step_scale = 2 if gradual else scale
    images = [_prepare(job, scale, config, device, step_kernel, gradual) for job in jobs]
    batches: dict[tuple[int, int, int], list[int]] = {}
    for j, im in enumerate(images):
        h, w = im.shape
        crop2 = _crop_size(config, (2 * h, 2 * w), 2) if gradual else 0
        batches.setdefault((im.lr.shape[1], _crop_size(config, im.shape, step_scale), crop2), []).append(j)
    total_tiles = sum(im.plan.count for im in images)
    tiles_done = 0
    train_progress = None if progress is None else (lambda done, total: progress("train", done, total))

    def infer(image: _Image, step: int, i: int, out_scale: int, window_sr: Callable[[Box], torch.Tensor]) -> torch.Tensor:
        """Member i's SR at ``out_scale`` over its tiles of this step, bicubic elsewhere, clipped."""
        nonlocal tiles_done
        h, w = image.shape
        base = upsample_to(image.lr, (h * out_scale, w * out_scale))
        tiles = image.plan.tiles[step][i]

        def tile_progress(done: int, _total: int) -> None:
            if progress is not None:
                progress("tiles", tiles_done + done, total_tiles)

        out = upscale_tiles(window_sr, base, tiles, (h, w), image.plan.halo, out_scale, tile_progress).clamp(0, 1)
        tiles_done += len(tiles)
        return out

    results: list[ZSSRResult | None] = [None] * len(jobs)
    for (_channels, crop1, crop2), indices in batches.items():
        t_start = time.perf_counter()
        batch = [images[j] for j in indices]
        outs: list[list[torch.Tensor | None]] = [[None] * im.members for im in batch]
        mids: list[list[torch.Tensor | None]] = [[None] * im.members for im in batch]  # gradual x4: the x2 images
        members = [[MemberInfo([], [], im.plan.tile) for _ in range(im.members)] for im in batch]
        later: list[Joiner] = []  # second steps that cannot join the first steps' batch (another crop size)
        infer_seconds = 0.0

        def on_finish(finished: list[Finished]) -> list[Joiner]:
            """Inference for the members that finished a step; gradual x4's second steps join."""
            nonlocal infer_seconds
            start = time.perf_counter()
            joins = []
            for (b, i), info, net in finished:
                im, member = batch[b], members[b][i]
                member.stages.append(info)
                step = len(member.stages) - 1
                member.tiles.append(len(im.plan.tiles[step][i]))
                if gradual and step == 0:  # I = the x2 image; step 2 learns I -> HR with the same kernel
                    mids[b][i] = infer(im, 0, i, 2, partial(_window_sr, net, im.lr, im.k_step[i : i + 1].to(device), 2, config))
                    mask = im.masks[i]
                    mask2 = None if mask is None else np.repeat(np.repeat(np.asarray(mask, bool), 2, 0), 2, 1)
                    levels = father_levels(mids[b][i], [mask2], config) + [(im.lr, [mask], 0.5)]  # the real LR image too
                    second = Joiner(levels, im.k_given[i : i + 1], [im.seeds[i]], [(b, i)], 1, net if config.x4_warm_start else None)
                    (joins if crop2 == crop1 else later).append(second)
                elif gradual:
                    window_sr = partial(_window_sr_x4_step2, net, mids[b][i], im.lr, im.k_given[i : i + 1].to(device), im.k4[i : i + 1], config)
                    outs[b][i], mids[b][i] = infer(im, 1, i, 4, window_sr), None
                else:
                    outs[b][i] = infer(im, 0, i, step_scale, partial(_window_sr, net, im.lr, im.k_step[i : i + 1].to(device), step_scale, config))
            infer_seconds += time.perf_counter() - start
            return joins

        joiners = [Joiner(father_levels(im.lr.expand(im.members, -1, -1, -1), im.masks, config), im.k_step, im.seeds,
                          [(b, i) for i in range(im.members)]) for b, im in enumerate(batch)]
        iterations = train_pool(joiners, step_scale, config, crop1, on_finish, train_progress)
        if later:
            iterations += train_pool(later, 2, config, crop2, on_finish, train_progress)
        seconds = time.perf_counter() - t_start
        for b, (j, im) in enumerate(zip(indices, batch)):
            arrays = []
            while outs[b]:  # each member's tensor is freed once converted
                arrays.append(_to_array(outs[b].pop(0), im))
            results[j] = ZSSRResult(arrays, members[b], iterations, seconds, seconds - infer_seconds)
    return results  # type: ignore[return-value]
