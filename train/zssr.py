"""ZSSR ("zero-shot" super-resolution) with a given kernel, batched over members.

A *member* is one (kernel, region mask, seed) triple - in Multi-KernelGAN one image region with
its own KernelGAN kernel. ``M`` members train together along a leading member dimension (grouped
convolutions, :mod:`zssr_net`), each with its own weights, Adam state, learning-rate policy and
stopping point; one member is a batch of one, and a member trained in a batch gets the same result
as alone with the same seed (all randomness is counter-based per member, :mod:`rng`).

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
  ``config.min_iterations``) or at ``config.iterations``; finished members leave the batch (frozen,
  no more updates), the others continue.

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

import numpy as np
import torch

from . import rng
from .config import ZSSRConfig
from .degradation import upsample_to
from .kernel import analytic_x4
from .masked_crop import gather_crops
from .members import MemberAdam, compact, take
from .merge import default_radius
from .zssr_data import (
    build_father_canvas,
    dihedral_permutations,
    father_levels,
    make_sons,
    sample_fathers,
)
from .zssr_inference import Box, back_project, plan_tiles, upscale_tiles, upscale_window
from .zssr_net import MemberConvNet, autocast_context

Progress = Callable[[str, int, int], None]  # ("train", iterations done, of this step) or ("tiles", done, in all)

# Stream used once per member to draw the fixed reconstruction-error crops.
# Step counters of different stages of a gradual run never collide.
_STAGE_STRIDE = 1 << 24


def align_kernels(kernels: Sequence[np.ndarray]) -> torch.Tensor:
    """Kernels of possibly different sizes -> float32 (M, K, K) with K the largest size, each placed
    so that :func:`blur_downsample` (output pixel j sees input j - (K-1)//2 ...) is unchanged."""
    arrays = [np.asarray(k, np.float32) for k in kernels]
    for k in arrays:
        if k.ndim != 2 or k.shape[0] != k.shape[1]:
            raise ValueError(f"kernels must be square 2-D arrays, got shape {k.shape}")
        if not np.all(np.isfinite(k)) or k.sum() <= 0:
            raise ValueError("kernels must be finite with a positive sum")
    size = max(k.shape[0] for k in arrays)
    out = np.zeros((len(arrays), size, size), np.float32)
    for i, k in enumerate(arrays):
        d = (size - 1) // 2 - (k.shape[0] - 1) // 2
        out[i, d : d + k.shape[0], d : d + k.shape[0]] = k / k.sum()
    return torch.from_numpy(out)


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


def train_members(
    levels: Sequence[tuple[torch.Tensor, Sequence[np.ndarray | None], float]],
    kernels: torch.Tensor,
    scale: int,
    config: ZSSRConfig,
    seeds: Sequence[int],
    crop_size: int,
    stage: int = 0,
    init: MemberConvNet | None = None,
    progress: Progress | None = None,
) -> tuple[MemberConvNet, list[StageInfo], int]:
    """Train M members on fathers from ``levels`` (see :func:`build_father_canvas`; the first level
    is the image being upscaled) with kernels (M, K, K) at ``scale``. Returns the trained net (all
    members), per-member info and the number of batched iterations run. ``progress(done, total)``
    is called at each learning-rate check (no extra host synchronisation)."""
    device = levels[0][0].device
    m = len(seeds)
    canvas = build_father_canvas(levels, crop_size, config.region_min_inside, config.region_share)
    cs = crop_size
    kernels = kernels.to(device)
    seeds_all = torch.as_tensor(list(seeds), dtype=torch.int64, device=device)
    perms = dihedral_permutations(cs, device)
    autocast, loss_scale = autocast_context(device, config)
    step0 = stage * _STAGE_STRIDE

    if init is None:
        net = MemberConvNet.initialise(
            seeds, canvas.images.shape[1], config.channels, config.depth, rng.Stream.ZSSR_INIT + rng.ZSSR_STAGE_STRIDE * stage, device
        )
    else:
        net = MemberConvNet(
            [w.detach().clone() for w in init.weights], [b.detach().clone() for b in init.biases], init.grouped
        )
    final = MemberConvNet([w.detach().clone() for w in net.weights], [b.detach().clone() for b in net.biases], net.grouped)
    net.requires_grad_(True)
    opt = MemberAdam(net.parameters(), shared_steps=True)  # members start together, never restart
    lr_t = torch.full((m,), config.lr, device=device)

    # Fixed reconstruction-error crops: drawn once per member from its first-level region.
    rec_canvas = build_father_canvas(levels[:1], crop_size, config.region_min_inside)
    n_rec = max(1, config.rec_crops)
    u = rng.uniform(seeds_all, rng.Stream.ZSSR_REC, step0, (n_rec,))
    rec_fathers, _ = gather_crops(rec_canvas.images, rec_canvas.cdf, u, cs)
    rec_sons = make_sons(rec_fathers, kernels, scale)
    shave = min(config.depth, cs // 4)
    del rec_canvas

    ids = list(range(m))  # global member ids of the current batch
    seeds_t = seeds_all
    lrs = [config.lr] * m
    last_change = [0] * m
    window = config.lr_policy_window
    n_slots = config.iterations // max(1, config.rec_every) + 1
    rec_buf = torch.zeros((m, n_slots), device=device)
    rec_iters: list[int] = []
    loss_hist = torch.zeros((m, max(1, window)), device=device)
    infos: list[StageInfo | None] = [None] * m
    checks = {config.min_iterations, config.iterations}
    noise_std = float(config.noise_std)
    c = canvas.images.shape[1]

    t = 0
    for t in range(1, config.iterations + 1):
        key = step0 + t
        fathers, _ = sample_fathers(canvas, seeds_t, key, config.batch_size, perms)
        noise = None
        if noise_std > 0:
            shape = (config.batch_size * c, math.ceil(cs / scale), math.ceil(cs / scale))
            noise = noise_std * rng.normal(seeds_t, rng.Stream.ZSSR_NOISE, key, shape)
        sons = make_sons(fathers, kernels, scale, noise)
        with autocast:
            out = net(sons)
        loss_m = (out.float() - fathers).abs().mean(dim=(1, 2, 3, 4))
        grads = torch.autograd.grad(loss_m.sum() * loss_scale, net.parameters())
        if loss_scale != 1.0:
            grads = [torch.nan_to_num(g.float() / loss_scale, nan=0.0, posinf=0.0, neginf=0.0) for g in grads]
        opt.step(net.parameters(), grads, lr_t)
        loss_hist[:, t % loss_hist.shape[1]] = loss_m.detach()

        if t % config.rec_every == 0:
            with torch.no_grad(), autocast:
                rec_out = net(rec_sons)
            diff = (rec_out.float() - rec_fathers)[..., shave : cs - shave, shave : cs - shave]
            rec_buf[:, len(rec_iters)] = diff.abs().mean(dim=(1, 2, 3, 4))
            rec_iters.append(t)

        policy = t % config.lr_policy_every == 0
        if not (policy or t in checks):
            continue
        # ---- one host sync: learning-rate policy and stopping ----
        if progress is not None:
            progress(t, config.iterations)
        rec_host = rec_buf[:, : len(rec_iters)].cpu().numpy()
        iters = np.asarray(rec_iters)
        for i in range(len(ids)):
            g = ids[i]
            if policy and t - last_change[g] >= window:
                sel = (iters > t - window) & (iters > last_change[g])
                if sel.sum() >= 3:
                    slope, se = _slope_and_se(iters[sel], rec_host[i, sel])
                    if not (-slope > config.lr_slope_ratio * se):
                        lrs[g] /= config.lr_decay
                        last_change[g] = t
        done = [
            i
            for i, g in enumerate(ids)
            if t >= config.iterations or (lrs[g] < config.lr_min and t >= config.min_iterations)
        ]
        if done:
            loss_host = loss_hist.mean(1).cpu().numpy()
            idx = torch.as_tensor(done, device=device)
            gidx = torch.as_tensor([ids[i] for i in done], device=device)
            for fw, w in zip(final.parameters(), net.parameters()):
                fw.index_copy_(0, gidx, w.detach().index_select(0, idx))
            for i in done:
                rec_last = float(rec_host[i, -1]) if rec_host.shape[1] else float("nan")
                infos[ids[i]] = StageInfo(t, lrs[ids[i]], float(loss_host[i]), rec_last, canvas.rules[ids[i]])
            keep = [i for i in range(len(ids)) if i not in set(done)]
            if not keep:
                break
            kidx = torch.as_tensor(keep, device=device)
            ids = [ids[i] for i in keep]
            net, opt, seeds_t, kernels, rec_sons, rec_fathers, rec_buf, loss_hist = take(
                (net, opt, seeds_t, kernels, rec_sons, rec_fathers, rec_buf, loss_hist), kidx
            )
            net.requires_grad_(True)
            compact(canvas, ("images", "cdf"), kidx)
        lr_t = torch.tensor([lrs[g] for g in ids], device=device, dtype=torch.float32)
    for g in range(m):  # only when no iteration ran (iterations == 0)
        if infos[g] is None:
            infos[g] = StageInfo(t, lrs[g], float("nan"), float("nan"), canvas.rules[g])
    return final, infos, t


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
    return train_members(father_levels(source, masks, config), kernels, scale, config, seeds, crop, progress=progress)


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
    config = config or ZSSRConfig.preset("fast")
    device = torch.device(device)
    t_start = time.perf_counter()
    img = np.asarray(image, np.float32)
    grey2d = img.ndim == 2
    if grey2d:
        img = img[..., None]
    if img.ndim != 3:
        raise ValueError(f"image must be HxW or HxWxC, got {image.shape}")
    alpha = None
    if img.shape[2] == 4:
        alpha, img = img[..., 3:], img[..., :3]
    h, w = img.shape[:2]
    m = len(kernels)
    if m == 0:
        raise ValueError("no kernels given")
    masks = [None] * m if masks is None else list(masks)
    seeds = list(range(m)) if seeds is None else [int(s) for s in seeds]
    if len(masks) != m or len(seeds) != m:
        raise ValueError("kernels, masks and seeds must have one entry per member")
    if kernel_scale is None:
        kernel_scale = 2 if scale == 4 else scale
    if kernel_scale not in (scale, 2) or (kernel_scale == 2 and scale not in (2, 4)):
        raise ValueError(f"kernel_scale {kernel_scale} does not fit scale {scale}")
    gradual = scale == 4 and kernel_scale == 2 and config.gradual_x4
    k_given = align_kernels(kernels)
    if scale == 4 and kernel_scale == 2 and not gradual:
        k_step = align_kernels([analytic_x4(np.asarray(k, np.float32)) for k in kernels])
    else:
        k_step = k_given
    for mk in masks:
        if mk is not None and np.asarray(mk).shape != (h, w):
            raise ValueError(f"mask shape {np.asarray(mk).shape} != image shape {(h, w)}")

    lr = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).to(device)[None]  # (1, C, h, w)
    margin = max(config.inference_margin, math.ceil(default_radius((h * scale, w * scale), scale) / scale) + 1)
    step_scale = 2 if gradual else scale
    k4 = align_kernels([analytic_x4(np.asarray(k, np.float32)) for k in kernels]).to(device) if gradual else None
    plan = plan_tiles(masks, (h, w), scale, margin, config, k_step.shape[-1], None if k4 is None else k4.shape[-1], img.shape[2])
    tiles_done = 0

    def tile_progress(done: int, _total: int) -> None:
        if progress is not None:
            progress("tiles", tiles_done + done, plan.count)

    def infer(step: int, i: int, out_scale: int, window_sr: Callable[[Box], torch.Tensor]) -> torch.Tensor:
        """Member i's SR at ``out_scale`` over its tiles of this step, bicubic elsewhere, clipped."""
        nonlocal tiles_done
        base = upsample_to(lr, (h * out_scale, w * out_scale))
        out = upscale_tiles(window_sr, base, plan.tiles[step][i], (h, w), plan.halo, out_scale, tile_progress).clamp(0, 1)
        tiles_done += len(plan.tiles[step][i])
        return out

    train_seconds = 0.0
    total_iters = 0
    train_progress = None if progress is None else (lambda done, total: progress("train", done, total))

    # ---- step 1 (the only one unless gradual x4) ----
    t0 = time.perf_counter()
    net, infos1, iters = train_on_image(lr, k_step, step_scale, config, masks, seeds, train_progress)
    train_seconds += time.perf_counter() - t0
    total_iters += iters
    outs = []
    for i in range(m):
        outs.append(infer(0, i, step_scale, partial(_window_sr, net.select([i]), lr, k_step[i : i + 1].to(device), step_scale, config)))
    members = [MemberInfo([infos1[i]], [len(plan.tiles[0][i])], plan.tile) for i in range(m)]

    # ---- step 2 of gradual x4: I -> HR with the same x2 kernel ----
    if gradual:
        mid = torch.cat(outs)  # (M, C, 2h, 2w)
        masks2 = [None if mk is None else np.repeat(np.repeat(np.asarray(mk, bool), 2, 0), 2, 1) for mk in masks]
        levels = father_levels(mid, masks2, config) + [(lr.expand(m, -1, -1, -1), masks, 0.5)]  # the real LR image too
        t0 = time.perf_counter()
        net2, infos2, iters = train_members(
            levels, k_given, 2, config, seeds, _crop_size(config, (2 * h, 2 * w), 2), stage=1,
            init=net if config.x4_warm_start else None, progress=train_progress,
        )
        train_seconds += time.perf_counter() - t0
        total_iters += iters
        outs2 = []
        for i in range(m):
            window_sr = partial(_window_sr_x4_step2, net2.select([i]), mid[i : i + 1], lr, k_given[i : i + 1].to(device), k4[i : i + 1], config)
            outs2.append(infer(1, i, 4, window_sr))
            members[i].stages.append(infos2[i])
            members[i].tiles.append(len(plan.tiles[1][i]))
        outs = outs2

    images = []
    while outs:  # each member's tensor is freed once converted (peak: one extra SR image, not M)
        arr = outs.pop(0)[0].float().cpu().numpy().transpose(1, 2, 0)
        if alpha is not None:
            a = upsample_to(torch.from_numpy(np.ascontiguousarray(alpha.transpose(2, 0, 1)))[None], arr.shape[:2])
            arr = np.concatenate([arr, a[0].numpy().transpose(1, 2, 0).clip(0, 1)], axis=2)
        if grey2d:
            arr = arr[..., 0]
        images.append(np.ascontiguousarray(arr, dtype=np.float32))
    return ZSSRResult(images, members, total_iters, time.perf_counter() - t_start, train_seconds)
