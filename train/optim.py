"""A small batched Adam: parameters carry a leading member dimension, each member has its own step
size and step count, so members with different schedules or restarts stay independent (and a
member gives the same updates whether it trains alone or in a batch)."""

from __future__ import annotations

from typing import Sequence

import torch


class BatchedAdam:
    """Adam (Kingma & Ba) over tensors shaped (M, ...).

    betas: (beta1, beta2); eps added to the bias-corrected sqrt of the second moment; per-member
    step counts ``steps`` int64 (M,) drive the bias corrections.
    """

    def __init__(self, params: Sequence[torch.Tensor], betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.betas = betas
        self.eps = eps
        self.exp_avg = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in params]
        self.exp_avg_sq = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in params]
        self.steps = torch.zeros(params[0].shape[0], dtype=torch.int64, device=params[0].device)

    @torch.no_grad()
    def step(self, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], lr: torch.Tensor) -> None:
        """In-place update; lr: float32 (M,) step size per member (0 freezes a member's weights)."""
        b1, b2 = self.betas
        self.steps += 1
        t = self.steps.to(torch.float32)
        bc1 = 1.0 - torch.pow(torch.tensor(b1, device=t.device), t)
        bc2_sqrt = torch.sqrt(1.0 - torch.pow(torch.tensor(b2, device=t.device), t))
        scale = lr / bc1
        for p, g, m, v in zip(params, grads, self.exp_avg, self.exp_avg_sq):
            shape = (-1,) + (1,) * (p.dim() - 1)
            m.mul_(b1).add_(g, alpha=1.0 - b1)
            v.mul_(b2).addcmul_(g, g, value=1.0 - b2)
            denom = (v.sqrt() / bc2_sqrt.reshape(shape)).add_(self.eps)
            p.sub_(scale.reshape(shape) * m / denom)

    def select(self, index: torch.Tensor) -> "BatchedAdam":
        """Keep only the members at ``index`` (int64 (M',))."""
        out = BatchedAdam.__new__(BatchedAdam)
        out.betas, out.eps = self.betas, self.eps
        out.exp_avg = [m[index].clone() for m in self.exp_avg]
        out.exp_avg_sq = [v[index].clone() for v in self.exp_avg_sq]
        out.steps = self.steps[index].clone()
        return out

    @torch.no_grad()
    def reset_member(self, member: int) -> None:
        """Forget one member's moments and step count (a restart)."""
        for m, v in zip(self.exp_avg, self.exp_avg_sq):
            m[member] = 0
            v[member] = 0
        self.steps[member] = 0
