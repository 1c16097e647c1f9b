"""Batched patch discriminator of KernelGAN.

Per member: spectral-norm 7x7 conv 3->64 (+bias), 5 x [spectral-norm 1x1 conv 64->64, BatchNorm,
ReLU], spectral-norm 1x1 conv 64->1 (+bias), sigmoid. Fully convolutional: a 26x26 crop gives a
20x20 map of probabilities in (0, 1) that each patch is real.

M members are stored along a leading dimension and run as grouped convolutions (one group per
member). Spectral normalisation is our own per-member power iteration (one step per call of
:meth:`BatchedDiscriminator.normalized_weights`, like ``torch.nn.utils.spectral_norm`` in training
mode); BatchNorm over M*64 channels is per-member BatchNorm (batch statistics, no running stats:
the discriminator is only used in training).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from . import rng
from .members import take

_EPS = 1e-12


def _xavier_normal(shape: tuple[int, ...], gain: float, gen: torch.Generator) -> torch.Tensor:
    """Xavier/Glorot normal for a conv weight (out, in, k, k)."""
    receptive = 1
    for s in shape[2:]:
        receptive *= s
    std = gain * math.sqrt(2.0 / ((shape[0] + shape[1]) * receptive))
    return torch.randn(shape, generator=gen) * std


def init_member_params(
    seed: int, channels: int = 64, in_channels: int = 3, kernel_size: int = 7, middle: int = 5, gain: float = 0.1
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """One member's (trainable params, power-iteration vectors), float32 on the CPU.

    params: "w0" (C, in, k, k), "b0" (C,), "w1".."w{middle}" (C, C, 1, 1), "gamma"/"beta" (middle, C),
    "wl" (1, C, 1, 1), "bl" (1,). vectors: "u0".."u{middle}" (C,), "ul" (1,), unit length.
    """
    gen = rng.member_generator(seed, rng.Stream.D_INIT)
    p = {"w0": _xavier_normal((channels, in_channels, kernel_size, kernel_size), gain, gen), "b0": torch.zeros(channels)}
    for i in range(1, middle + 1):
        p[f"w{i}"] = _xavier_normal((channels, channels, 1, 1), gain, gen)
    p["gamma"] = torch.ones(middle, channels)
    p["beta"] = torch.zeros(middle, channels)
    p["wl"] = _xavier_normal((1, channels, 1, 1), gain, gen)
    p["bl"] = torch.zeros(1)
    u = {}
    for name in [f"w{i}" for i in range(middle + 1)] + ["wl"]:
        v = torch.randn(p[name].shape[0], generator=gen)
        u["u" + name[1:]] = v / v.norm().clamp_min(_EPS)
    return p, u


class BatchedDiscriminator:
    """M patch discriminators.

    ``flat``: float32 (M, P) leaf tensor (requires grad) holding every member's trainable parameters
    (views by name through :meth:`param`); ``vectors``: per-member spectral-norm power-iteration
    vectors u (M, out) per normalised weight, updated in place (``copy_``, never rebound).
    """

    def __init__(self, flat: torch.Tensor, vectors: dict[str, torch.Tensor], layout: dict[str, tuple[int, ...]], config: dict[str, float]) -> None:
        self.flat = flat
        self.vectors = vectors
        self.layout = layout
        self.config = config
        self.middle = layout["gamma"][0]
        self.sn_names = [f"w{i}" for i in range(self.middle + 1)] + ["wl"]
        self._offsets: dict[str, tuple[int, int]] = {}
        offset = 0
        for name, shape in layout.items():
            size = 1
            for d in shape:
                size *= d
            self._offsets[name] = (offset, size)
            offset += size

    @classmethod
    def create(
        cls, seeds: Sequence[int], channels: int = 64, kernel_size: int = 7, middle: int = 5,
        gain: float = 0.1, device: torch.device | str = "cpu",
    ) -> "BatchedDiscriminator":
        config = {"channels": channels, "kernel_size": kernel_size, "middle": middle, "gain": gain}
        members = [init_member_params(s, channels, 3, kernel_size, middle, gain) for s in seeds]
        layout = {k: tuple(v.shape) for k, v in members[0][0].items()}
        flat = torch.stack([torch.cat([v.reshape(-1) for v in p.values()]) for p, _ in members])
        vectors = {k: torch.stack([u[k] for _, u in members]).to(device) for k in members[0][1]}
        return cls(flat.to(device).requires_grad_(True), vectors, layout, config)

    @property
    def members(self) -> int:
        return self.flat.shape[0]

    def params(self) -> dict[str, torch.Tensor]:
        """Views of ``flat`` by name, (M, *shape) each (one SplitBackward for all of them)."""
        sizes = [self._offsets[n][1] for n in self.layout]
        parts = torch.split(self.flat, sizes, dim=1)
        return {n: p.reshape(self.members, *self.layout[n]) for n, p in zip(self.layout, parts)}

    def normalized_weights(self, update: bool = True) -> dict[str, torch.Tensor]:
        """All parameters by name, (M, *shape), with the conv weights spectrally normalised: W / sigma(W)
        per member (differentiable w.r.t. ``flat``; u and v are constants). With ``update``, one
        power-iteration step refreshes u first."""
        out = self.params()
        for name in self.sn_names:
            w = out[name]
            mat = w.reshape(w.shape[0], w.shape[1], -1)  # (M, out, in*k*k)
            key = "u" + name[1:]
            with torch.no_grad():
                u = self.vectors[key]
                v = F.normalize(torch.bmm(u[:, None], mat)[:, 0], dim=1, eps=_EPS)
                if update:
                    u = F.normalize(torch.bmm(mat, v[:, :, None])[..., 0], dim=1, eps=_EPS)
                    self.vectors[key].copy_(u)  # in place: a captured CUDA graph replays the update
            sigma = (u * torch.bmm(mat, v[:, :, None])[..., 0]).sum(dim=1)
            out[name] = w / sigma.reshape(-1, 1, 1, 1, 1)
        return out

    def forward(self, x: torch.Tensor, weights: dict[str, torch.Tensor]) -> torch.Tensor:
        """x: (M, S, N, 3, h, w): S independent sets (e.g. real and fake crops) of N crops per member;
        weights: from :meth:`normalized_weights` -> (M, S, N, h - k + 1, w - k + 1) probabilities.
        Each (member, set) has its own BatchNorm statistics, as if D were called once per set. The
        1x1 layers run as batched matrix products over (member, set) groups."""
        m, sets, n, c, h, w = x.shape
        g = m * sets

        def per_group(t: torch.Tensor) -> torch.Tensor:  # (M, ...) -> (M * S, ...)
            return t[:, None].expand(m, sets, *t.shape[1:]).reshape(g, *t.shape[1:])

        w0 = per_group(weights["w0"])
        y = F.conv2d(
            x.permute(2, 0, 1, 3, 4, 5).reshape(n, g * c, h, w),
            w0.reshape(g * w0.shape[1], *w0.shape[2:]), per_group(weights["b0"]).reshape(-1), groups=g,
        )  # (N, G * C, h', w')
        oh, ow = y.shape[-2:]
        ch = w0.shape[1]
        y = y.reshape(n, g, ch, oh * ow).permute(1, 2, 0, 3).reshape(g, ch, n * oh * ow)  # (G, C, L)
        gamma, beta = per_group(weights["gamma"]), per_group(weights["beta"])
        for i in range(1, self.middle + 1):
            y = torch.bmm(per_group(weights[f"w{i}"]).reshape(g, ch, ch), y)
            y = F.batch_norm(
                y.reshape(1, g * ch, -1), None, None, gamma[:, i - 1].reshape(-1), beta[:, i - 1].reshape(-1),
                training=True, eps=1e-5,
            ).reshape(g, ch, -1)
            y = F.relu(y)
        y = torch.bmm(per_group(weights["wl"]).reshape(g, 1, ch), y) + per_group(weights["bl"]).reshape(g, 1, 1)
        y = torch.sigmoid(y).reshape(m, sets, n, oh, ow)
        return y

    def select(self, index: torch.Tensor) -> "BatchedDiscriminator":
        """Keep only the members at ``index`` (int64 (M',))."""
        flat = take(self.flat.detach(), index).requires_grad_(True)
        return BatchedDiscriminator(flat, take(self.vectors, index), self.layout, self.config)

    @torch.no_grad()
    def reinit_member(self, member: int, seed: int) -> None:
        """Overwrite one member's parameters and power-iteration vectors with a fresh init from ``seed``."""
        c = self.config
        p, u = init_member_params(seed, int(c["channels"]), 3, int(c["kernel_size"]), int(c["middle"]), float(c["gain"]))
        self.flat[member] = torch.cat([v.reshape(-1) for v in p.values()]).to(self.flat.device)
        for k, v in u.items():
            self.vectors[k][member] = v.to(self.vectors[k].device)
