"""Batched deep linear generator of KernelGAN.

Each of M members owns a stack of bias-free, activation-free convolutions (default 64 channels,
kernel sizes [7, 5, 3, 1, 1, 1], the last 1x1 with stride 2; receptive field 13x13). Weights are
stored per member with a leading member dimension, ``(M, out, in, k, k)``, and applied with grouped
convolutions (one group per member). Colour channels are processed as a batch of grey images, so one
kernel serves all channels.

Because the network is linear with valid convolutions, it equals one strided correlation with its
*effective kernel* (a delta passed through all layers). :meth:`BatchedGenerator.forward` uses that
identity: it builds the (differentiable) effective kernel through the layers and applies it once,
which gives the same function and gradients as :meth:`forward_layers` at a small fraction of the
cost. Kernels stay float32.

:class:`GaussianGenerator` is the opt-in ``gaussian`` kernel model (a kernel prior): the same
interface, with each member's kernel an anisotropic Gaussian of three trainable parameters.
:func:`create_generator` picks one by ``KernelGANConfig.kernel_model``.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import rng
from .config import KERNEL_MODELS, KernelGANConfig
from .kernel import sf_center
from .members import take


def receptive_field(kernel_sizes: Sequence[int]) -> int:
    """Side of the effective kernel in input pixels: sum(k - 1) + 1 (13 for [7, 5, 3, 1, 1, 1])."""
    return sum(k - 1 for k in kernel_sizes) + 1


def output_size(input_size: int, kernel_sizes: Sequence[int], stride: int = 2) -> int:
    """Generator output side for an input crop side (64 -> 26 with the defaults)."""
    return (input_size - receptive_field(kernel_sizes)) // stride + 1


def init_member_weights(
    seed: int, kernel_sizes: Sequence[int], channels: int, device: torch.device | str = "cpu", gain: float = 0.5
) -> list[torch.Tensor]:
    """One member's weights: list of float32 (out, in, k, k), Xavier-normal with gain ``gain`` (the
    reference init: small weights, so Adam's fixed-size steps move the kernel quickly), drawn on the
    CPU from the member's counter-based generator (so every device and batch composition gets the
    same numbers)."""
    gen = rng.member_generator(seed, rng.Stream.INIT)
    weights = []
    n = len(kernel_sizes)
    for i, k in enumerate(kernel_sizes):
        cin = 1 if i == 0 else channels
        cout = 1 if i == n - 1 else channels
        std = gain * math.sqrt(2.0 / ((cin + cout) * k * k))
        weights.append(torch.randn((cout, cin, k, k), generator=gen) * std)
    # The effective kernel's sum is the product of the layers' spatially summed weight matrices. A
    # deep linear net started with a negative sum stays stuck near the saddle at 0 (it cannot learn
    # the sum-to-one / DownScale fit), so flip the last layer's sign when needed.
    total = torch.ones(1, 1)
    for w in weights:
        total = w.sum(dim=(2, 3)) @ total
    if float(total) < 0:
        weights[-1] = -weights[-1]
    weights = [w.to(device) for w in weights]
    return weights


class BatchedGenerator:
    """M deep linear generators.

    ``flat``: float32 (M, P) leaf tensor (requires grad) holding every member's weights; layer l is the
    view :meth:`layer_weights` ``[l]`` of shape (M, out_l, in_l, k_l, k_l). One flat tensor per member
    keeps the optimiser to a handful of tensor ops per step.
    """

    def __init__(self, flat: torch.Tensor, kernel_sizes: Sequence[int], channels: int, stride: int = 2) -> None:
        self.flat = flat
        self.kernel_sizes = tuple(kernel_sizes)
        self.channels = channels
        self.stride = stride
        self.kernel_size = receptive_field(kernel_sizes)
        n = len(self.kernel_sizes)
        self.shapes = [
            (1 if i == n - 1 else channels, 1 if i == 0 else channels, k, k) for i, k in enumerate(self.kernel_sizes)
        ]

    @classmethod
    def create(
        cls, seeds: Sequence[int], kernel_sizes: Sequence[int], channels: int, device: torch.device | str = "cpu"
    ) -> "BatchedGenerator":
        """Initialise one member per seed."""
        rows = [torch.cat([w.reshape(-1) for w in init_member_weights(s, kernel_sizes, channels)]) for s in seeds]
        return cls(torch.stack(rows).to(device).requires_grad_(True), kernel_sizes, channels)

    @property
    def members(self) -> int:
        return self.flat.shape[0]

    def layer_weights(self) -> list[torch.Tensor]:
        """Views of ``flat``: per layer (M, out, in, k, k)."""
        sizes = [a * b * c * d for a, b, c, d in self.shapes]
        parts = torch.split(self.flat, sizes, dim=1)  # one SplitBackward: gradients are concatenated once
        return [p.reshape(self.members, *shape) for p, shape in zip(parts, self.shapes)]

    def kernel(self) -> torch.Tensor:
        """Effective correlation kernel per member, float32 (M, K, K), differentiable w.r.t. ``flat``.

        Equal to a delta passed through all layers (stride 1), but composed from the last layer
        backwards: with A (M, C_l, a, a) the composite of layers l+1..L seen from layer l's output
        channels, and W (M, C_l, C_{l-1}, k, k) layer l, the composite seen from layer l's input is the
        full convolution B[j, s + t] = sum_i A[i, s] W[i, j, t] (a batched matmul over i, then
        :func:`torch.nn.functional.fold` adds the k x k blocks at their offsets s). A few small matmuls
        instead of 64-channel feature maps.
        """
        weights = self.layer_weights()
        m = self.members
        comp = weights[-1][:, 0]  # (M, C, k, k)
        for w in reversed(weights[:-1]):
            a = comp.shape[-1]
            cout, cin, k = w.shape[1], w.shape[2], w.shape[-1]
            # P[m, j, t, s] = sum_i W[m, i, j, t] A[m, i, s]
            prod = torch.bmm(
                w.reshape(m, cout, cin * k * k).transpose(1, 2), comp.reshape(m, cout, a * a)
            )  # (M, cin * k * k, a * a)
            if a == 1:
                comp = prod.reshape(m, cin, k, k)
            elif k == 1:
                comp = prod.reshape(m, cin, a, a)
            else:
                comp = F.fold(prod, output_size=(a + k - 1, a + k - 1), kernel_size=k)
        return comp[:, 0]

    def kernel_by_delta(self) -> torch.Tensor:
        """The effective kernel the literal way: a delta at the centre of a (2K-1)^2 image through all
        layers (stride 1), flipped. (M, K, K); same values as :meth:`kernel` (used by tests)."""
        k, m = self.kernel_size, self.members
        delta = torch.zeros((1, m, 2 * k - 1, 2 * k - 1), device=self.flat.device, dtype=self.flat.dtype)
        delta[:, :, k - 1, k - 1] = 1.0
        return self._layers(delta, strided=False)[0].flip(-1, -2)

    def _layers(self, x: torch.Tensor, strided: bool) -> torch.Tensor:
        """x: (N, M * 1, H, W) -> (N, M * 1, H', W') through every layer (grouped by member)."""
        m = self.members
        weights = self.layer_weights()
        for i, w in enumerate(weights):
            stride = self.stride if (strided and i == len(weights) - 1) else 1
            x = F.conv2d(x, w.reshape(m * w.shape[1], *w.shape[2:]), stride=stride, groups=m)
        return x

    def forward(self, x: torch.Tensor, kernel: torch.Tensor | None = None) -> torch.Tensor:
        """x: (M, C, H, W) crops in [0, 1] -> (M, C, (H - K) // 2 + 1, (W - K) // 2 + 1) via the effective
        kernel (pass ``kernel`` to reuse one from :meth:`kernel`)."""
        if kernel is None:
            kernel = self.kernel()
        return apply_kernel(x, kernel, self.stride)

    def forward_layers(self, x: torch.Tensor) -> torch.Tensor:
        """Same result as :meth:`forward`, layer by layer (the literal network; for tests)."""
        m, c, h, w = x.shape
        out = self._layers(x.transpose(0, 1).reshape(c, m, h, w), strided=True)
        return out.transpose(0, 1)

    def select(self, index: torch.Tensor) -> "BatchedGenerator":
        """Keep only the members at ``index`` (int64 (M',))."""
        flat = take(self.flat.detach(), index).requires_grad_(True)
        return BatchedGenerator(flat, self.kernel_sizes, self.channels, self.stride)

    @torch.no_grad()
    def reinit_member(self, member: int, seed: int) -> None:
        """Overwrite one member's weights with a fresh initialisation from ``seed``."""
        weights = init_member_weights(seed, self.kernel_sizes, self.channels)
        self.flat[member] = torch.cat([w.reshape(-1) for w in weights]).to(self.flat.device)


def apply_kernel(x: torch.Tensor, kernel: torch.Tensor, stride: int = 2) -> torch.Tensor:
    """Per-member strided valid correlation of every channel with the member's kernel.

    x: (M, C, H, W); kernel: (M, K, K) -> (M, C, (H - K) // stride + 1, (W - K) // stride + 1).
    """
    m, c, h, w = x.shape
    k = kernel.shape[-1]
    weight = kernel[:, None].expand(m, c, k, k).reshape(m * c, 1, k, k).to(x.dtype)
    out = F.conv2d(x.reshape(1, m * c, h, w), weight, stride=stride, groups=m * c)
    return out.reshape(m, c, out.shape[-2], out.shape[-1])


class GaussianGenerator:
    """M parametric generators: each member's kernel is an anisotropic Gaussian (the ``gaussian``
    kernel model, a kernel prior; the reference KernelGAN uses :class:`BatchedGenerator`).

    ``flat``: (M, 3) leaf tensor (requires grad) of (log(sigma_major - min_sigma),
    log(sigma_minor - min_sigma), theta) per member: sigmas in pixels of the image being downscaled,
    never below ``min_sigma`` (a physical kernel is never sharper than that; without a floor the GAN
    drives the minor sigma towards 0), theta in radians from the +x (column) axis towards +y (rows).
    The kernel is ``size`` x ``size``, centred at the sf-aligned centre, and sums to 1 by
    construction. Same interface as :class:`BatchedGenerator`.
    """

    def __init__(self, flat: torch.Tensor, size: int = 13, min_sigma: float = 0.0, stride: int = 2) -> None:
        self.flat = flat
        self.kernel_size = size
        self.min_sigma = min_sigma
        self.stride = stride

    @classmethod
    def create(
        cls, seeds: Sequence[int], size: int = 13, min_sigma: float = 0.0, device: torch.device | str = "cpu",
        sigma: float = 1.0,
    ) -> "GaussianGenerator":
        """One member per seed: both sigmas ~``sigma`` px (> ``min_sigma``; log-normal jitter 0.05 on
        the part above the floor), a random axis."""
        if not 0.0 <= min_sigma < sigma:
            raise ValueError(f"need 0 <= min_sigma < sigma, got min_sigma={min_sigma}, sigma={sigma}")
        log_excess = math.log(sigma - min_sigma)
        rows = []
        for s in seeds:
            gen = rng.member_generator(s, rng.Stream.INIT)
            jitter, angle = torch.randn(2, generator=gen), torch.rand(1, generator=gen)
            rows.append(torch.stack((log_excess + 0.05 * jitter[0], log_excess + 0.05 * jitter[1], math.pi * angle[0])))
        return cls(torch.stack(rows).to(device).requires_grad_(True), size, min_sigma)

    @property
    def members(self) -> int:
        return self.flat.shape[0]

    def sigmas(self) -> torch.Tensor:
        """(M, 2) sigma_major, sigma_minor in pixels, differentiable w.r.t. ``flat``."""
        return self.min_sigma + torch.exp(self.flat[:, :2])

    def kernel(self) -> torch.Tensor:
        """(M, K, K) correlation kernels, differentiable w.r.t. ``flat``."""
        r = torch.arange(self.kernel_size, device=self.flat.device, dtype=self.flat.dtype)
        r = r - sf_center(self.kernel_size, self.stride)
        y, x = r[None, :, None], r[None, None, :]
        sigmas = self.sigmas()
        major, minor, theta = sigmas[:, 0, None, None], sigmas[:, 1, None, None], self.flat[:, 2, None, None]
        cos, sin = torch.cos(theta), torch.sin(theta)
        along, across = cos * x + sin * y, cos * y - sin * x
        g = torch.exp(-0.5 * ((along / major) ** 2 + (across / minor) ** 2))
        return g / g.sum(dim=(1, 2), keepdim=True)

    def forward(self, x: torch.Tensor, kernel: torch.Tensor | None = None) -> torch.Tensor:
        """Same as :meth:`BatchedGenerator.forward`."""
        return apply_kernel(x, self.kernel() if kernel is None else kernel, self.stride)

    def select(self, index: torch.Tensor) -> "GaussianGenerator":
        """Keep only the members at ``index`` (int64 (M',))."""
        flat = take(self.flat.detach(), index).requires_grad_(True)
        return GaussianGenerator(flat, self.kernel_size, self.min_sigma, self.stride)

    @torch.no_grad()
    def reinit_member(self, member: int, seed: int) -> None:
        """Overwrite one member's parameters with a fresh initialisation from ``seed``."""
        fresh = GaussianGenerator.create([seed], self.kernel_size, self.min_sigma)
        self.flat[member] = fresh.flat[0].detach().to(self.flat)

    @torch.no_grad()
    def start_member_from(self, member: int, kernel: np.ndarray) -> None:
        """Start one member at the Gaussian with a given kernel's second moments (sigmas floored just
        above ``min_sigma``): the ``hybrid`` estimator's KENet start."""
        from .kernel import kernel_moments

        major, minor, theta = kernel_moments(kernel)
        excess = [max(s - self.min_sigma, 0.02) for s in (major, minor)]
        self.flat[member] = torch.tensor([math.log(excess[0]), math.log(excess[1]), theta]).to(self.flat)


def create_generator(
    config: KernelGANConfig, seeds: Sequence[int], device: torch.device | str = "cpu"
) -> BatchedGenerator | GaussianGenerator:
    """The generator of ``config.kernel_model``: "deep-linear" (the reference) or "gaussian"."""
    if config.kernel_model == "deep-linear":
        return BatchedGenerator.create(seeds, config.g_kernel_sizes, config.g_channels, device)
    if config.kernel_model == "gaussian":
        return GaussianGenerator.create(seeds, receptive_field(config.g_kernel_sizes), config.gaussian_min_sigma, device)
    raise ValueError(f"unknown kernel model {config.kernel_model!r}; expected one of {', '.join(KERNEL_MODELS)}")
