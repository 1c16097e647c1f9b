"""The ZSSR network written for M independent members along a leading dimension, and autocast.

Every parameter is stored as one tensor with a leading member dimension ``M`` (weights
``(M, C_out, C_in, 3, 3)``, biases ``(M, C_out)``); on CUDA the forward pass folds members into the
channel dimension and runs grouped convolutions (``groups=M``, one launch per layer for all
members); on the CPU (compute-bound, where grouping buys nothing) it loops over members so a member
in a batch is bit-identical to the member alone. Either way member ``m``'s output depends only on
member ``m``'s input and weights, and one member is simply ``M == 1``. The loss of a batch is the
*sum* of the members' losses, so each member's gradient is exactly the gradient it would get alone.

The optimiser (Adam with one learning rate per member) is :class:`members.MemberAdam`.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch
import torch.nn.functional as F

from .config import ZSSRConfig
from .members import take
from .rng import Stream, member_generator

# Stream for weight initialisation (one per stage of a gradual run, see zssr.py); kept apart from
# the named streams in rng.py (1..7).


class MemberConvNet:
    """``depth`` 3x3 convolutions with ``channels`` features, ReLU between (none after the last),
    global residual: ``net(x) = x + f(x)``. Input/output ``(M, C, H, W)`` or ``(M, B, C, H, W)``."""

    def __init__(
        self, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor], grouped: bool | None = None
    ):
        self.weights = list(weights)
        self.biases = list(biases)
        self.grouped = grouped  # None: grouped convolutions on CUDA, a member loop on the CPU

    # ----------------------------------------------------------------------------------------
    @classmethod
    def initialise(
        cls,
        seeds: Sequence[int],
        in_channels: int,
        channels: int = 64,
        depth: int = 8,
        stream: int = Stream.ZSSR_INIT,
        device: torch.device | str = "cpu",
    ) -> "MemberConvNet":
        """He-normal hidden layers, a last layer scaled by 0.1 (the residual starts near the cubic
        input), zero biases. Each member's weights come from its own seed (drawn on the CPU, so the
        same on every device)."""
        sizes = [in_channels] + [channels] * (depth - 1) + [in_channels]
        weights: list[list[torch.Tensor]] = [[] for _ in range(depth)]
        for seed in seeds:
            gen = member_generator(int(seed), stream)
            for layer in range(depth):
                c_in, c_out = sizes[layer], sizes[layer + 1]
                std = (2.0 / (9 * c_in)) ** 0.5
                if layer == depth - 1:
                    std *= 0.1
                weights[layer].append(torch.randn((c_out, c_in, 3, 3), generator=gen) * std)
        w = [torch.stack(ws).to(device) for ws in weights]
        b = [torch.zeros((len(seeds), sizes[layer + 1]), device=device) for layer in range(depth)]
        return cls(w, b)

    @property
    def members(self) -> int:
        return self.weights[0].shape[0]

    def parameters(self) -> list[torch.Tensor]:
        return [*self.weights, *self.biases]

    def requires_grad_(self, flag: bool = True) -> "MemberConvNet":
        for p in self.parameters():
            p.requires_grad_(flag)
        return self

    @classmethod
    def cat(cls, nets: Sequence["MemberConvNet"]) -> "MemberConvNet":
        """The members of several nets in one, in order (detached copies)."""
        weights = [torch.cat([n.weights[i].detach() for n in nets]) for i in range(len(nets[0].weights))]
        biases = [torch.cat([n.biases[i].detach() for n in nets]) for i in range(len(nets[0].biases))]
        return cls(weights, biases, nets[0].grouped)

    def select(self, index: Sequence[int] | torch.Tensor) -> "MemberConvNet":
        """A new net holding only the given members (detached copies)."""
        idx = torch.as_tensor(index, dtype=torch.long, device=self.weights[0].device)
        weights = take([w.detach() for w in self.weights], idx)
        return MemberConvNet(weights, take([b.detach() for b in self.biases], idx), self.grouped)

    # ----------------------------------------------------------------------------------------
    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """f(x) for x (M, B, C, H, W) -> (M, B, C, H, W).

        Grouped convolutions (one launch per layer for all members) when ``self.grouped`` is True,
        or when it is None (auto) and x is on CUDA; otherwise a loop over members with ordinary
        convolutions. On the CPU both cost the same, and the loop gives results bit-identical to a
        member trained alone (grouped kernels round differently, and Adam amplifies that).
        """
        m = x.shape[0]
        grouped = self.grouped if self.grouped is not None else x.is_cuda
        if grouped or m == 1:
            return self._residual_grouped(x)
        return torch.stack([self._residual_grouped(x[i : i + 1], member=i)[0] for i in range(m)])

    def _residual_grouped(self, x: torch.Tensor, member: int | None = None) -> torch.Tensor:
        m, bsz, c, h, w = x.shape
        y = x.transpose(0, 1).reshape(bsz, m * c, h, w)
        if y.is_cuda:
            y = y.contiguous(memory_format=torch.channels_last)
        last = len(self.weights) - 1
        for i, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            if member is not None:
                weight, bias = weight[member : member + 1], bias[member : member + 1]
            c_out, c_in = weight.shape[1], weight.shape[2]
            y = F.conv2d(
                y,
                weight.reshape(m * c_out, c_in, 3, 3).to(y.dtype),
                bias.reshape(m * c_out).to(y.dtype),
                padding=1,
                groups=m,
            )
            if i < last:
                y = F.relu(y)
        return y.reshape(bsz, m, c, h, w).transpose(0, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """net(x) = x + f(x); x (M, C, H, W) or (M, B, C, H, W), same shape out (in f's dtype
        promoted with x's)."""
        squeeze = x.dim() == 4
        x5 = x[:, None] if squeeze else x
        out = x5 + self.residual(x5)
        return out[:, 0] if squeeze else out


def autocast_context(device: torch.device, config: ZSSRConfig) -> tuple[contextlib.AbstractContextManager, float]:
    """(autocast context, loss scale) for training/inference on this device."""
    # No cast cache: a captured CUDA graph must not keep autocast's cached weight copies (and the
    # member nets cast their weights per call anyway).
    if device.type == "cuda" and config.amp:
        if torch.cuda.is_bf16_supported():
            return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False), 1.0
        return torch.autocast("cuda", dtype=torch.float16, cache_enabled=False), 1024.0
    return contextlib.nullcontext(), 1.0
