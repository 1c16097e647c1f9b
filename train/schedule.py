"""Per-member KernelGAN schedule, kept as tensors on the training device.

Rules (iteration counts are per member, so members that restarted keep their own clock):

* bicubic (DownScaleLoss) weight: starts at ``bicubic_weight``; once the bicubic loss has been below
  ``bicubic_threshold`` for ``bicubic_patience`` consecutive iterations, it is divided by
  ``bicubic_decay`` at every multiple of ``bicubic_decay_every`` iterations, never below
  ``bicubic_floor``;
* when the bicubic weight is below ``regularizers_on_below``, the centralised and sparsity terms
  switch on with weights ``centralized_weight`` and ``sparse_weight``;
* learning rate: ``lr * lr_decay_factor ** (iteration // lr_decay_every)``.

Everything is evaluated with tensor ops (no host synchronisation per step), and :meth:`Schedule.update`
changes the state tensors in place (never rebinds them), so a captured CUDA graph can replay it.
"""

from __future__ import annotations

import torch

from .config import KernelGANConfig


class Schedule:
    """State for M members: ``bicubic_weight`` float32 (M,), ``below`` int64 (M,) consecutive
    iterations under the threshold, ``triggered`` bool (M,) decay started."""

    def __init__(self, config: KernelGANConfig, members: int, device: torch.device | str = "cpu") -> None:
        self.config = config
        self.bicubic_weight = torch.full((members,), float(config.bicubic_weight), device=device)
        self.below = torch.zeros(members, dtype=torch.int64, device=device)
        self.triggered = torch.zeros(members, dtype=torch.bool, device=device)

    def regularizer_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(centralised weight, sparsity weight), float32 (M,) each: zero until the bicubic weight
        drops below ``regularizers_on_below`` (the sparsity weight is the kernel model's,
        :attr:`KernelGANConfig.generator_sparse_weight`)."""
        on = (self.bicubic_weight < self.config.regularizers_on_below).float()
        return on * self.config.centralized_weight, on * self.config.generator_sparse_weight

    def learning_rates(self, iteration: torch.Tensor, base: float) -> torch.Tensor:
        """Per-member step size for the (0-based) iteration int64 (M,) -> float32 (M,)."""
        c = self.config
        # torch.pow(number, tensor): no host-to-device copy (torch.tensor(x, device=...) would block).
        return base * torch.pow(c.lr_decay_factor, (iteration // c.lr_decay_every).float())

    @torch.no_grad()
    def update(self, iteration: torch.Tensor, bicubic_loss: torch.Tensor) -> None:
        """After 0-based iteration ``iteration`` (int64 (M,)) with unweighted bicubic loss (M,)."""
        c = self.config
        done = iteration + 1
        under = bicubic_loss < c.bicubic_threshold
        # In place (a captured CUDA graph replays this update on the same tensors).
        self.below.copy_(torch.where(under, self.below + 1, 0))
        self.triggered |= self.below >= c.bicubic_patience
        decay = self.triggered & (done % c.bicubic_decay_every == 0)
        decayed = (self.bicubic_weight / c.bicubic_decay).clamp_min(c.bicubic_floor)
        self.bicubic_weight.copy_(torch.where(decay, decayed, self.bicubic_weight))

    def select(self, index: torch.Tensor) -> "Schedule":
        """Keep only the members at ``index``."""
        out = Schedule.__new__(Schedule)
        out.config = self.config
        out.bicubic_weight = self.bicubic_weight[index].clone()
        out.below = self.below[index].clone()
        out.triggered = self.triggered[index].clone()
        return out

    @torch.no_grad()
    def reset_member(self, member: int) -> None:
        """Back to the initial state for one member (a restart)."""
        self.bicubic_weight[member] = float(self.config.bicubic_weight)
        self.below[member] = 0
        self.triggered[member] = False
