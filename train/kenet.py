"""KENet: a learned kernel estimator (Cao et al., "Kernel estimation network for blind super-resolution").

A small CNN predicts the x2 SR kernel of a grey LR window in one forward pass:

    conv3x3 + ReLU, residual block,
    3 x [max-pool 2, conv3x3 + ReLU, residual block]   (channels ``widths``),
    global average pool, FC + ReLU, FC + ReLU, FC -> softmax over the 13x13 kernel (sum 1, >= 0).

The paper's network (64/128/256/512 channels, FC 1024, 96 px windows, 6e5 steps on four GPUs) is
scaled down so that it trains in under an hour on a 2-core CPU: widths 16/32/64/128, FC 256,
64 px windows (the KernelGAN crop size, so the same crop-inside-region rule decides where windows
may go), with BatchNorm and a quadratic head (see :class:`KENetConfig`). It is trained with the
paper's adaptive attention loss plus a second-moment term (:func:`training_loss`) on synthetic
degradations (:mod:`kenet_data`) by ``benchmarks/train_kernel_estimator.py``; the trained weights ship
with the package (``weights/kenet_x2.pt``) and are loaded with a sha256 check. A region's kernel
(:func:`estimate_region_kernels`) is the Gaussian with the mean second moments of its windows, the
diagonal moment measured on windows rotated by 45 degrees (docs/kernel-estimation.md says why) and
scaled by the weights' :class:`Calibration` (fitted on held-aside training photos by
``benchmarks/calibrate_kernel_estimator.py``, stored in the weights card).

Shapes and units: windows are float32 (N, 1, 64, 64) luma in [0, 1] (normalised inside the
network: zero mean, unit standard deviation per window); kernels are float32 (N, 13, 13), applied by
correlation then subsampling by 2, centred at the sf-aligned centre 6.5.
"""

from __future__ import annotations

import hashlib
import math
import io
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import KENetEstimatorConfig

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
WEIGHTS_FILE = WEIGHTS_DIR / "kenet_x2.pt"
CARD_FILE = WEIGHTS_DIR / "kenet_x2.json"
FLOOR_VARIANCE = 0.05  # px^2 added to the quadratic head's covariance: never a delta


class WeightsError(RuntimeError):
    """The shipped (or given) KENet weights are missing, corrupt or do not match their checksum."""


@dataclass(frozen=True)
class KENetConfig:
    """The network's shape. window: LR window side (px); widths: channels of the four stages;
    hidden: FC width; kernel_size: output kernel side (px); batch_norm: after every conv (ours, not
    the paper's: it trains faster at a CPU-sized budget); head: "free" = the paper's K*K logits;
    "quadratic" = the logits of a Gaussian (a covariance from three outputs) plus K*K free residual
    logits - still a softmax over the taps, with a prior that makes the kernel's width and axis
    three numbers to learn instead of 169 to coordinate."""

    window: int = 64
    widths: tuple[int, int, int, int] = (16, 32, 64, 128)
    hidden: int = 256
    kernel_size: int = 13
    batch_norm: bool = True
    head: Literal["quadratic", "free"] = "quadratic"


def _conv(c_in: int, c_out: int, norm: bool) -> nn.Sequential:
    """3x3 conv (+ BatchNorm)."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=not norm)]
    return nn.Sequential(*layers, nn.BatchNorm2d(c_out)) if norm else nn.Sequential(*layers)


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int, norm: bool) -> None:
        super().__init__()
        self.conv1 = _conv(channels, channels, norm)
        self.conv2 = _conv(channels, channels, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.conv2(F.relu(self.conv1(x))))


@dataclass(frozen=True)
class Calibration:
    """How the moments measured from a network's kernels map to the true ones (see :func:`window_moments`),
    fitted on held-aside training photos by ``benchmarks/calibrate_kernel_estimator.py``.

    cov_xy_gain: the diagonal moment from 45-degree-rotated windows, (var_45 - var_135) / 2, comes out
    shrunk towards 0; the true cov_xy is this multiple of it (var_x and var_y are measured without such
    a bias). 1.0 = uncalibrated (a network built from a config, a card without calibration).
    """

    cov_xy_gain: float = 1.0

    def apply(self, moments: np.ndarray) -> np.ndarray:
        """float64 (N, 3) measured (var_x, var_y, cov_xy) -> the calibrated moments (px^2)."""
        return np.array(moments, np.float64, ndmin=2) * np.array([1.0, 1.0, self.cov_xy_gain])


class KENet(nn.Module):
    """windows (N, 1, window, window) luma in [0, 1] -> kernels (N, K, K), softmax (sum 1).

    ``calibration`` (a :class:`Calibration`) is not a parameter: :func:`load_kenet` sets it from the card.
    """

    def __init__(self, config: KENetConfig = KENetConfig()) -> None:
        super().__init__()
        self.config = config
        self.calibration = Calibration()
        w = config.widths
        n = config.batch_norm
        layers: list[nn.Module] = [_conv(1, w[0], n), nn.ReLU(), _ResidualBlock(w[0], n)]
        for c_in, c_out in zip(w[:-1], w[1:]):
            layers += [nn.MaxPool2d(2), _conv(c_in, c_out, n), nn.ReLU(), _ResidualBlock(c_out, n)]
        self.features = nn.Sequential(*layers)
        k = config.kernel_size
        outputs = k * k + (3 if config.head == "quadratic" else 0)
        self.head = nn.Sequential(
            nn.Linear(w[-1], config.hidden), nn.ReLU(),
            nn.Linear(config.hidden, config.hidden), nn.ReLU(),
            nn.Linear(config.hidden, outputs),
        )
        from .kernel import sf_center

        r = torch.arange(k, dtype=torch.float32) - sf_center(k, 2)
        self.register_buffer("offsets", torch.stack(torch.meshgrid(r, r, indexing="xy"), -1).reshape(-1, 2), persistent=False)
        # Start at a plausible kernel (an isotropic Gaussian of sigma 1.3 px), not a uniform 13x13 one.
        last = self.head[-1]
        with torch.no_grad():
            last.weight.mul_(0.01)
            last.bias.zero_()
            if config.head == "quadratic":
                last.bias[:2] = math.log(1.3)
            else:
                from .degradation import anisotropic_gaussian

                last.bias.copy_(torch.from_numpy(np.log(anisotropic_gaussian(k, 1.69, 1.69, 0.0, 2) + 1e-4)).reshape(-1))

    def logits(self, windows: torch.Tensor) -> torch.Tensor:
        """(N, 1, W, W) -> (N, K*K) logits of the kernel taps (row-major)."""
        mean = windows.mean(dim=(1, 2, 3), keepdim=True)
        std = windows.std(dim=(1, 2, 3), keepdim=True)
        out = self.head(self.features((windows - mean) / (std + 1e-3)).mean(dim=(2, 3)))
        if self.config.head == "free":
            return out
        # Gaussian part: covariance L L^T + floor with L = [[e^a, 0], [c, e^b]] (x, y), then the residual.
        a, b, c = out[:, 0], out[:, 1], out[:, 2]
        la, lb = torch.exp(a), torch.exp(b)
        sxx = la * la + FLOOR_VARIANCE
        sxy = la * c
        syy = c * c + lb * lb + FLOOR_VARIANCE
        det = sxx * syy - sxy * sxy
        x, y = self.offsets[:, 0], self.offsets[:, 1]
        quad = (syy[:, None] * x * x - 2 * sxy[:, None] * x * y + sxx[:, None] * y * y) / det[:, None]
        return -0.5 * quad + out[:, 3:]

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        k = self.config.kernel_size
        return F.softmax(self.logits(windows), dim=1).reshape(-1, k, k)


def attention_loss(
    estimate: torch.Tensor,
    truth: torch.Tensor,
    thresholds: tuple[float, float] = (0.01, 0.1),
    weights: tuple[float, float, float] = (0.01, 0.1, 1.0),
) -> torch.Tensor:
    """The paper's adaptive attention loss, mean over the batch.

    rho0 |k* - k| + rho1 |k*_l1 - k| + rho2 |k*_l2 - k|, where k*_l keeps the estimate only at taps
    where the true kernel exceeds l * max(k) (elsewhere it equals the truth, so adds no error): the
    kernel's core is weighted most, its tails least. estimate, truth: (N, K, K); sums of |.| per kernel.
    """
    diff = (estimate - truth).abs()
    peak = truth.amax(dim=(1, 2), keepdim=True)
    loss = weights[0] * diff.sum(dim=(1, 2))
    for level, rho in zip(thresholds, weights[1:]):
        loss = loss + rho * (diff * (truth > level * peak)).sum(dim=(1, 2))
    return loss.mean()


def second_moments(kernels: torch.Tensor) -> torch.Tensor:
    """(N, K, K) kernels -> (N, 3) var_x, var_y, cov_xy (px^2) about the sf-aligned centre (6.5 for
    13x13 at x2); linear in the kernel, so differentiable. x is the column, y the row axis."""
    from .kernel import sf_center

    r = torch.arange(kernels.shape[-1], dtype=kernels.dtype, device=kernels.device) - sf_center(kernels.shape[-1], 2)
    y, x = r[:, None], r[None, :]
    return torch.stack([(kernels * x * x).sum((1, 2)), (kernels * y * y).sum((1, 2)), (kernels * x * y).sum((1, 2))], 1)


def training_loss(estimate: torch.Tensor, truth: torch.Tensor, moment_weight: float = 0.1) -> torch.Tensor:
    """What KENet is trained with: :func:`attention_loss` plus ``moment_weight`` x the L1 distance of
    the kernels' second moments (px^2). The moment term is ours, not the paper's: tap-wise L1 alone
    gives the shape of the kernel (its width and axis) a weak signal, and a network trained for a
    CPU-sized budget with it alone predicts round kernels."""
    moments = (second_moments(estimate) - second_moments(truth)).abs().sum(dim=1).mean()
    return attention_loss(estimate, truth) + moment_weight * moments


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_weights(model: KENet, path: Path, card: dict) -> dict:
    """Write the state dict (with its config) to ``path`` and the card (plus size and sha256) to
    ``path.with_suffix('.json')``, both atomically. Returns the card as written."""
    from mkgan_engine.imageio import write_bytes_atomic

    buffer = io.BytesIO()
    torch.save({"config": asdict(model.config), "state_dict": model.state_dict()}, buffer)
    data = buffer.getvalue()
    card = {**card, "config": asdict(model.config), "bytes": len(data), "sha256": sha256_of(data)}
    write_bytes_atomic(path, data)
    write_bytes_atomic(path.with_suffix(".json"), (json.dumps(card, indent=2) + "\n").encode())
    return card


def load_card(path: Path = WEIGHTS_FILE) -> dict:
    """The JSON card next to a weights file (training data, kernel family, steps, scores, sha256)."""
    card_path = Path(path).with_suffix(".json")
    try:
        return json.loads(card_path.read_text())
    except FileNotFoundError:
        raise WeightsError(f"KENet weights card {card_path} is missing; reinstall mkgan-engine") from None
    except (OSError, ValueError) as exc:
        raise WeightsError(f"KENet weights card {card_path} is unreadable: {exc}") from None


def load_kenet(path: str | Path | None = None, device: str | torch.device = "cpu") -> KENet:
    """The trained KENet in eval mode. ``path`` defaults to the shipped weights; the file's sha256
    must equal the one in its card. Raises :class:`WeightsError` for a missing, corrupt or
    mismatching file - there is no silent fallback."""
    path = Path(path) if path is not None else WEIGHTS_FILE
    card = load_card(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise WeightsError(f"KENet weights {path} are missing; reinstall mkgan-engine") from None
    if sha256_of(data) != card.get("sha256"):
        raise WeightsError(
            f"KENet weights {path} are corrupt: sha256 {sha256_of(data)[:12]}... does not match "
            f"{str(card.get('sha256'))[:12]}... in {path.with_suffix('.json').name}; reinstall mkgan-engine"
        )
    try:
        blob = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        model = KENet(KENetConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in blob["config"].items()}))
        model.load_state_dict(blob["state_dict"])
    except Exception as exc:  # a checksum-valid file that does not load is a packaging bug
        raise WeightsError(f"KENet weights {path} cannot be loaded: {exc}") from None
    model.calibration = card_calibration(card)
    return model.to(device).eval()


def card_calibration(card: dict) -> Calibration:
    """The :class:`Calibration` a weights card records (``card["calibration"]``; none = uncalibrated)."""
    fields = card.get("calibration") or {}
    try:
        return Calibration(cov_xy_gain=float(fields.get("cov_xy_gain", 1.0)))
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"KENet weights card has an unreadable calibration {fields!r}: {exc}") from None


# ----------------------------------------------------------------------------- inference on regions
@dataclass(frozen=True)
class RegionKernel:
    """One region's KENet estimate. kernel: float32 13x13 x2 kernel (sum 1, sf-aligned centre 6.5);
    moments: the combined (var_x, var_y, cov_xy) of the windows (HR px^2, calibrated) the kernel is the
    Gaussian of; windows: how many windows were combined; spread_px: standard deviation over the windows
    of (sigma_major, sigma_minor) in px (a confidence: small = the windows agree); notes: fallbacks."""

    kernel: np.ndarray
    moments: tuple[float, float, float]
    windows: int
    spread_px: tuple[float, float]
    notes: tuple[str, ...] = ()


def _dihedral(windows: torch.Tensor, index: int) -> torch.Tensor:
    """The index-th of the 8 flips/rotations of (..., H, W): bit 0 transposes, bit 1 flips rows, bit 2
    flips columns (applied in that order)."""
    if index & 1:
        windows = windows.transpose(-1, -2)
    if index & 2:
        windows = windows.flip(-2)
    if index & 4:
        windows = windows.flip(-1)
    return windows


def _undo_dihedral(kernels: torch.Tensor, index: int) -> torch.Tensor:
    """Kernels estimated on ``_dihedral(windows, index)`` -> kernels of the untransformed windows.

    A flip of the image maps a kernel tap r to 2c - r about the sf-aligned centre c = 6.5, i.e. a flip
    of the array and a roll by one (the tap that leaves the support is ~0)."""
    if index & 4:
        kernels = kernels.flip(-1).roll(1, -1)
    if index & 2:
        kernels = kernels.flip(-2).roll(1, -2)
    if index & 1:
        kernels = kernels.transpose(-1, -2)
    return kernels


SMALL_WINDOWS = (48, 32)
"""Window sides tried, in order, for a region that holds no trained-size window (the network pools
globally; on 32-px windows its moments are as unbiased and ~1.7x noisier, docs/blur-masker.md)."""


def region_window(mask: np.ndarray, window: int) -> int:
    """The largest of ``window`` and :data:`SMALL_WINDOWS` that the region holds by the crop-fit rule
    (:func:`~mkgan_engine.train.crop_fit.holds_crop`); the smallest when none fits."""
    from .crop_fit import holds_crop

    for side in (window, *SMALL_WINDOWS):
        if holds_crop(np.asarray(mask, bool), side):
            return side
    return SMALL_WINDOWS[-1]


def window_centres(
    grey: np.ndarray, mask: np.ndarray | None, window: int, config: KENetEstimatorConfig
) -> tuple[np.ndarray, list[str]]:
    """(int (N, 2) window centres (row, col), notes). Centres lie on a ``stride`` grid among the
    centres the sampler allows for a ``window`` crop; flat windows are dropped; at most
    ``max_windows`` (the most textured) are kept. Raises ValueError if no window fits the image."""
    from .sampler import allowed_centres

    region = np.ones(grey.shape, bool) if mask is None else np.asarray(mask, bool)
    allowed, _, note = allowed_centres(region, window)
    notes = [note] if note else []
    ys, xs = np.nonzero(allowed)
    grid = (ys % config.stride == ys.min() % config.stride) & (xs % config.stride == xs.min() % config.stride)
    if grid.sum() < 4:  # a small region: every allowed centre, thinned to about 16
        grid = np.zeros_like(grid)
        grid[np.linspace(0, ys.size - 1, min(16, ys.size)).astype(int)] = True
    centres = np.stack([ys[grid], xs[grid]], axis=1)
    half = window // 2
    stds = np.array([grey[y - half : y - half + window, x - half : x - half + window].std() for y, x in centres])
    textured = stds >= config.min_window_std
    if not textured.any():
        notes.append(f"region is flat (luma std < {config.min_window_std} in every window): kernel uncertain")
        textured[:] = True
    order = np.argsort(-np.where(textured, stds, -1.0))[: min(config.max_windows, int(textured.sum()))]
    return centres[np.sort(order)], notes


def _gaussian_from_moments(moments: np.ndarray, size: int) -> np.ndarray:
    """A size x size Gaussian with covariance [[var_x, cov_xy], [cov_xy, var_y]] (px^2) at the
    sf-aligned centre; the covariance is made positive definite first (variances >= 0.05 px^2)."""
    from .degradation import anisotropic_gaussian

    var_x, var_y = max(moments[0], 0.05), max(moments[1], 0.05)
    cov = float(np.clip(moments[2], -0.95 * math.sqrt(var_x * var_y), 0.95 * math.sqrt(var_x * var_y)))
    values, vectors = np.linalg.eigh(np.array([[var_x, cov], [cov, var_y]]))
    theta = float(np.arctan2(vectors[1, 1], vectors[0, 1]))
    return anisotropic_gaussian(size, values[1], values[0], theta, 2)


def _second_moments(kernels: np.ndarray) -> np.ndarray:
    """(N, K, K) -> (N, 3) var_x, var_y, cov_xy about each kernel's centre of mass (px^2)."""
    from .kernel import kernel_covariance

    return np.array([kernel_covariance(k) for k in kernels], np.float64).reshape(-1, 3)


def _crops(grey: np.ndarray, centres: np.ndarray, window: int, angle_deg: float = 0.0) -> np.ndarray:
    """float32 (N, window, window) windows centred at ``centres`` (row, col), in a frame rotated by
    ``angle_deg`` (bicubic, reflecting at the image border): the window's x axis points along
    (cos, sin) of the angle in the image (x = column, y = row)."""
    import cv2

    half = window // 2
    if angle_deg == 0.0:
        return np.stack([grey[y - half : y - half + window, x - half : x - half + window] for y, x in centres]).astype(np.float32)
    cos, sin = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    c0 = (window - 1) / 2.0
    source = grey.astype(np.float32)
    out = []
    for y, x in centres:  # destination (u, v) -> source (x, y) = R (u - c0, v - c0) + centre of the window
        cx, cy = x - half + c0, y - half + c0
        m = np.array([[cos, -sin, cx - cos * c0 + sin * c0], [sin, cos, cy - sin * c0 - cos * c0]], np.float64)
        out.append(cv2.warpAffine(source, m, (window, window), flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
                                  borderMode=cv2.BORDER_REFLECT_101))
    return np.stack(out)


def _window_kernels(model: "KENet", crops: np.ndarray, dihedral: bool) -> np.ndarray:
    """float64 (N, K, K) kernels of float32 (N, W, W) windows, averaged over the 8 flips/rotations."""
    param = next(model.parameters())
    x = torch.from_numpy(crops)[:, None].to(param.device)
    transforms = range(8) if dihedral else range(1)
    total = sum(_undo_dihedral(model(_dihedral(x, t)), t) for t in transforms)
    return (total / len(transforms)).double().cpu().numpy()


@torch.inference_mode()
def window_moments(model: KENet, grey: np.ndarray, centres: np.ndarray, dihedral: bool = False,
                   window: int | None = None, batch: int = 256) -> np.ndarray:
    """float64 (N, 3) second moments (var_x, var_y, cov_xy; px^2 at HR, about the kernel's centre of
    mass) of the kernels KENet estimates on ``model.config.window``-sided windows of ``grey`` (float HxW
    luma in [0, 1]) centred at ``centres`` (int (N, 2) row, col; the window must lie inside the image);
    ``window`` overrides the trained window side (the network pools globally, so any side works).

    The network measures a kernel's spread along the window's axes well and its cov_xy poorly, so
    cov_xy comes from the variances along the diagonals: windows rotated by 45 degrees, where
    var_x' = var along (1, 1)/sqrt2 and var_y' = var along (-1, 1)/sqrt2, and cov_xy = (var_x' - var_y') / 2
    (interpolation blur adds to both alike and cancels). These are the measured moments, as the blur
    map clusters them; ``model.calibration.apply`` maps them to a kernel's (the rotated windows'
    difference comes out shrunk). Windows go through the network ``batch`` at a time.
    """
    window = window or model.config.window
    out = []
    for start in range(0, len(centres), batch):
        part = centres[start : start + batch]
        upright = _second_moments(_window_kernels(model, _crops(grey, part, window), dihedral))
        diagonal = _second_moments(_window_kernels(model, _crops(grey, part, window, 45.0), dihedral))
        out.append(np.stack([upright[:, 0], upright[:, 1], (diagonal[:, 0] - diagonal[:, 1]) / 2.0], axis=1))
    return np.concatenate(out) if out else np.zeros((0, 3))


@torch.inference_mode()
def estimate_region_kernels(
    image: np.ndarray,
    masks: Sequence[np.ndarray | None],
    config: KENetEstimatorConfig = KENetEstimatorConfig(),
    model: KENet | None = None,
    device: str | torch.device = "cpu",
) -> list[RegionKernel]:
    """One x2 kernel per region from KENet on overlapping windows inside it: the Gaussian with the
    windows' combined calibrated moments (:func:`window_moments`, ``model.calibration``).

    image: float HxW or HxWxC (C = 1..4; alpha ignored) in [0, 1]; masks: bool HxW per region, or
    None for the whole image; model: a loaded KENet (default: :func:`load_kenet` of
    ``config.weights``). Raises ValueError when the image is smaller than one window (64 px).
    """
    from .kernel import kernel_moments, shift_to_center
    from .sampler import to_grey

    model = model if model is not None else load_kenet(config.weights, device)
    window = model.config.window
    grey = to_grey(np.clip(np.nan_to_num(np.asarray(image, np.float64)), 0, 1))
    if min(grey.shape) < window:
        raise ValueError(f"image is {grey.shape[1]}x{grey.shape[0]} px; KENet needs at least {window}x{window} px")
    results = []
    for mask in masks:
        side = window if mask is None else region_window(mask, window)
        centres, notes = window_centres(grey, mask, side, config)
        if side != window:
            notes.insert(0, f"region too small for {window}px windows: {side}px windows")
        per_window = model.calibration.apply(window_moments(model, grey, centres, config.dihedral, window=side))
        if config.combine == "mean":
            moments = per_window.mean(axis=0)
        elif config.combine == "median":
            moments = np.median(per_window, axis=0)
        else:
            raise ValueError(f"unknown combine {config.combine!r}; expected 'mean' or 'median'")
        kernel = _gaussian_from_moments(moments, model.config.kernel_size)
        sigmas = np.array([kernel_moments(_gaussian_from_moments(m, model.config.kernel_size))[:2] for m in per_window])
        results.append(RegionKernel(
            kernel=shift_to_center(kernel, 2), moments=tuple(float(m) for m in moments), windows=len(centres),
            spread_px=(float(sigmas[:, 0].std()), float(sigmas[:, 1].std())), notes=tuple(notes),
        ))
    return results
