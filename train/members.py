"""The member-batch toolkit shared by the trainers (KernelGAN, ZSSR).

A *member* is one independent small network; ``M`` members train together with a leading member
dimension ``M`` on every tensor of their state (weights, optimiser moments, schedules, crop maps).
Members leave the batch when they finish (compaction, :func:`take` / :func:`compact`), a member may
restart from scratch (:meth:`MemberAdam.reset_member`), and a member gets the same updates whether
it trains alone or in a batch (every operation here is per member and elementwise).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

import torch

T = TypeVar("T")


def take(value: T, index: torch.Tensor) -> T:
    """The members ``index`` (int64 (M',) on the value's device) of a per-member value.

    A tensor (M, ...) -> ``index_select`` along dim 0 (a new (M', ...) tensor; detach the input to
    drop the autograd link); a list, tuple or dict of per-member values -> the same container of
    taken values; any other object must have ``select(index)`` (a member net, optimiser, schedule)
    and returns what that gives.
    """
    if isinstance(value, torch.Tensor):
        return value.index_select(0, index)  # type: ignore[return-value]
    if isinstance(value, dict):
        return {k: take(v, index) for k, v in value.items()}  # type: ignore[return-value]
    if isinstance(value, (list, tuple)):
        return type(value)(take(v, index) for v in value)  # type: ignore[return-value]
    return value.select(index)  # type: ignore[attr-defined]


def compact(obj: Any, names: Iterable[str], index: torch.Tensor) -> None:
    """Keep only the members ``index`` (int64 (M',)) in the attributes ``names`` of ``obj`` (in
    place: each attribute is replaced by :func:`take` of it)."""
    for name in names:
        setattr(obj, name, take(getattr(obj, name), index))


def _per_member(x: torch.Tensor, dim: int) -> torch.Tensor:
    """A per-member (M,) tensor shaped to broadcast against a (M, ...) tensor of ``dim`` dims."""
    return x.reshape((-1,) + (1,) * (dim - 1))


class MemberAdam:
    """Adam (Kingma & Ba) over parameter tensors shaped (M, ...), one learning rate per member.

    The moments ``exp_avg`` / ``exp_avg_sq`` have the parameters' shapes and dtypes (gradients are
    cast to them), and ``steps`` (int64 (M,) on the device) counts each member's updates, so a member
    can restart (:meth:`reset_member`) while the others go on. The bias corrections ``1 - beta**t``
    are computed on the device in ``bias_dtype`` and used in the learning rate's dtype:
    float32 for KernelGAN, float64 for ZSSR (the numbers a Python double gives) - the rounding each
    trainer's reference outputs were made with.

    Free of host synchronisation; the state is updated in place (a captured CUDA graph replays it)
    with one multi-tensor (``torch._foreach_*``) kernel per operation for all parameter tensors.
    """

    def __init__(
        self,
        params: Sequence[torch.Tensor],
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        bias_dtype: torch.dtype = torch.float32,
    ) -> None:
        self.betas = betas
        self.eps = eps
        self.bias_dtype = bias_dtype
        self.exp_avg = [torch.zeros_like(p) for p in params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in params]
        self.steps = torch.zeros(params[0].shape[0], dtype=torch.int64, device=params[0].device)

    def _bias_corrections(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Advance the step counts (in place); (1 - beta1**t, sqrt(1 - beta2**t)) per member, (M,) in
        ``dtype``."""
        b1, b2 = self.betas
        self.steps += 1
        t = self.steps.to(self.bias_dtype)
        # A Python-number base is made on the device (torch.tensor(b, device=...) is a blocking copy).
        return (1.0 - torch.pow(b1, t)).to(dtype), torch.sqrt(1.0 - torch.pow(b2, t)).to(dtype)

    @torch.no_grad()
    def step(self, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], lr: torch.Tensor) -> None:
        """In-place update of ``params`` (the tensors the moments were made for, or their
        :func:`take` after a compaction) with ``grads``; lr: float32 (M,) step size per member (0
        freezes a member's weights)."""
        b1, b2 = self.betas
        bc1, bc2_sqrt = self._bias_corrections(lr.dtype)
        scale = lr / bc1
        params, m, v = list(params), self.exp_avg, self.exp_avg_sq
        grads = [g.to(mi.dtype) for g, mi in zip(grads, m)]
        # One multi-tensor (foreach) kernel per operation for all parameter tensors; the same float
        # operations, in the same order, as the per-tensor update
        # m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2; p -= (lr / bc1) m / (sqrt(v) / bc2_sqrt + eps).
        torch._foreach_mul_(m, b1)
        torch._foreach_add_(m, grads, alpha=1.0 - b1)
        torch._foreach_mul_(v, b2)
        torch._foreach_addcmul_(v, grads, grads, value=1.0 - b2)
        denom = torch._foreach_sqrt(v)
        torch._foreach_div_(denom, [_per_member(bc2_sqrt, p.dim()) for p in params])
        torch._foreach_add_(denom, self.eps)
        update = torch._foreach_mul(m, [_per_member(scale, p.dim()) for p in params])
        torch._foreach_div_(update, denom)
        torch._foreach_sub_(params, update)

    def select(self, index: torch.Tensor) -> MemberAdam:
        """The state of the members ``index`` (int64 (M',)) only; step them with the parameters'
        :func:`take` at the same index."""
        out = MemberAdam.__new__(MemberAdam)
        out.betas, out.eps, out.bias_dtype = self.betas, self.eps, self.bias_dtype
        out.exp_avg, out.exp_avg_sq = take(self.exp_avg, index), take(self.exp_avg_sq, index)
        out.steps = take(self.steps, index)
        return out

    def extend(self, params: Sequence[torch.Tensor]) -> MemberAdam:
        """This state for the first members of ``params`` (the parameters with new members appended,
        e.g. :meth:`zssr_net.MemberConvNet.cat`) and a fresh start for the appended ones."""
        out = MemberAdam(params, self.betas, self.eps, self.bias_dtype)
        m = self.steps.shape[0]
        for new, old in zip(out.exp_avg + out.exp_avg_sq + [out.steps], self.exp_avg + self.exp_avg_sq + [self.steps]):
            new[:m] = old
        return out

    @torch.no_grad()
    def reset_member(self, member: int) -> None:
        """Forget one member's moments and step count (a restart)."""
        for m, v in zip(self.exp_avg, self.exp_avg_sq):
            m[member] = 0
            v[member] = 0
        self.steps[member] = 0
