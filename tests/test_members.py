"""The member-batch toolkit (train/members.py): MemberAdam is Adam per member (both step-count
forms, pinned to the float operations the trainers' reference outputs were made with), a member
gets the same updates alone or in a batch, restarts and compaction keep members independent."""

from __future__ import annotations

import pytest
import torch
from mkgan_engine.train.members import MemberAdam, compact, take

SHAPES = [(3, 4, 2, 3, 3), (3, 4)]  # a conv weight and a bias per member, M = 3


def _problem(seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
    """Parameters (M, ...) and a sequence of 6 gradient sets for them."""
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen, dtype=dtype) for s in SHAPES]
    grads = [[torch.randn(s, generator=gen, dtype=dtype) for s in SHAPES] for _ in range(6)]
    return params, grads


LR = torch.tensor([1e-3, 3e-2, 0.0])


def _legacy_device_steps(params, grads_seq, lr, betas):
    """The update KernelGAN's reference outputs were made with (per-member float32 bias corrections)."""
    b1, b2 = betas
    m_ = [torch.zeros_like(p) for p in params]
    v_ = [torch.zeros_like(p) for p in params]
    steps = torch.zeros(params[0].shape[0], dtype=torch.int64)
    for grads in grads_seq:
        steps += 1
        t = steps.to(torch.float32)
        bc1 = 1.0 - torch.pow(torch.tensor(b1), t)
        bc2_sqrt = torch.sqrt(1.0 - torch.pow(torch.tensor(b2), t))
        scale = lr / bc1
        for p, g, m, v in zip(params, grads, m_, v_):
            shape = (-1,) + (1,) * (p.dim() - 1)
            m.mul_(b1).add_(g, alpha=1.0 - b1)
            v.mul_(b2).addcmul_(g, g, value=1.0 - b2)
            denom = (v.sqrt() / bc2_sqrt.reshape(shape)).add_(1e-8)
            p.sub_(scale.reshape(shape) * m / denom)


def _legacy_shared_steps(params, grads_seq, lr, betas):
    """The update ZSSR's reference outputs were made with (one step count, double bias corrections)."""
    b1, b2 = betas
    m_ = [torch.zeros_like(p) for p in params]
    v_ = [torch.zeros_like(p) for p in params]
    for step, grads in enumerate(grads_seq, 1):
        bc1 = 1.0 - b1**step
        bc2_sqrt = (1.0 - b2**step) ** 0.5
        for p, g, m, v in zip(params, grads, m_, v_):
            g = g.float()
            m.mul_(b1).add_(g, alpha=1.0 - b1)
            v.mul_(b2).addcmul_(g, g, value=1.0 - b2)
            denom = (v.sqrt() / bc2_sqrt).add_(1e-8)
            p.sub_((lr / bc1).reshape(-1, *([1] * (p.dim() - 1))) * m / denom)


def _run(params, grads_seq, lr, **kwargs) -> MemberAdam:
    opt = MemberAdam(params, **kwargs)
    for grads in grads_seq:
        opt.step(params, grads, lr)
    return opt


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_per_member_steps_are_bit_identical_to_the_kernelgan_reference(dtype):
    params, grads = _problem(dtype=dtype)
    ref = [p.clone() for p in params]
    _legacy_device_steps(ref, grads, LR, (0.5, 0.999))
    _run(params, grads, LR, betas=(0.5, 0.999))
    for p, r in zip(params, ref):
        assert p.dtype == dtype and torch.equal(p, r)


def test_float64_bias_corrections_are_bit_identical_to_the_zssr_reference():
    params, grads = _problem()
    ref = [p.clone() for p in params]
    _legacy_shared_steps(ref, grads, LR, (0.9, 0.999))
    _run(params, grads, LR, bias_dtype=torch.float64)
    for p, r in zip(params, ref):
        assert torch.equal(p, r)


@pytest.mark.parametrize("bias_dtype", [torch.float32, torch.float64])
def test_is_adam_and_lr_zero_freezes_a_member(bias_dtype):
    params, grads = _problem(dtype=torch.float64)
    start = [p.clone() for p in params]
    _run(params, grads, LR.double(), betas=(0.9, 0.999), bias_dtype=bias_dtype)
    for i in range(2):  # members 0 and 1 against torch.optim.Adam
        alone = [p[i].clone().requires_grad_(True) for p in start]
        ref = torch.optim.Adam(alone, lr=float(LR[i]), betas=(0.9, 0.999), eps=1e-8)
        for gs in grads:
            for a, g in zip(alone, gs):
                a.grad = g[i].clone()
            ref.step()
        for p, a in zip(params, alone):
            torch.testing.assert_close(p[i], a.detach(), rtol=1e-6, atol=1e-6)
    for p, s in zip(params, start):
        assert torch.equal(p[2], s[2])


@pytest.mark.parametrize("bias_dtype", [torch.float32, torch.float64])
def test_a_member_alone_equals_the_member_in_the_batch_and_select_keeps_its_state(bias_dtype):
    params, grads = _problem()
    alone = [p[1:2].clone() for p in params]
    opt = _run(params, grads[:3], LR, bias_dtype=bias_dtype)
    alone_opt = _run(alone, [[g[1:2] for g in gs] for gs in grads[:3]], LR[1:2], bias_dtype=bias_dtype)
    # Compact to members (1, 2) halfway; member 1 goes on as if it had always been alone.
    index = torch.tensor([1, 2])
    params, opt = take(params, index), opt.select(index)
    for gs in grads[3:]:
        opt.step(params, take(gs, index), LR[index])
        alone_opt.step(alone, [g[1:2] for g in gs], LR[1:2])
    for p, a in zip(params, alone):
        assert torch.equal(p[:1], a)


def test_reset_member_is_a_fresh_start_for_that_member_only():
    params, grads = _problem()
    no_reset = [p.clone() for p in params]
    _run(no_reset, grads, LR, betas=(0.5, 0.999))
    opt = _run(params, grads[:3], LR, betas=(0.5, 0.999))
    fresh = [p[0:1].clone() for p in params]  # member 0 restarts from its current weights
    opt.reset_member(0)
    assert opt.steps.tolist() == [0, 3, 3]
    fresh_opt = MemberAdam(fresh, (0.5, 0.999))
    for gs in grads[3:]:
        opt.step(params, gs, LR)
        fresh_opt.step(fresh, [g[0:1] for g in gs], LR[0:1])
    for p, f in zip(params, fresh):
        assert torch.equal(p[0:1], f)
    # The others kept their moments and clocks.
    for p, n in zip(params, no_reset):
        assert torch.equal(p[1:], n[1:]) and not torch.equal(p[0], n[0])


class _Selectable:
    def __init__(self, rows: torch.Tensor) -> None:
        self.rows = rows

    def select(self, index: torch.Tensor) -> _Selectable:
        return _Selectable(self.rows[index] * 10)


def test_take_and_compact():
    x = torch.arange(12.0).reshape(4, 3)
    index = torch.tensor([3, 1])
    assert torch.equal(take(x, index), x[[3, 1]])
    pair = take((x, {"a": x[:, 0], "b": [x[:, 1]]}), index)
    assert isinstance(pair, tuple) and torch.equal(pair[1]["a"], torch.tensor([9.0, 3.0]))
    assert torch.equal(pair[1]["b"][0], torch.tensor([10.0, 4.0]))
    assert torch.equal(take(_Selectable(x), index).rows, x[[3, 1]] * 10)

    class State:
        pass

    state = State()
    state.images, state.net, state.config = x, _Selectable(x), "kept"
    compact(state, ("images", "net"), index)
    assert torch.equal(state.images, x[[3, 1]]) and torch.equal(state.net.rows, x[[3, 1]] * 10)
    assert state.config == "kept"
