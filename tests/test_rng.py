"""Counter-based random numbers (train/rng.py): a window of steps drawn in one call is, bit for bit,
the per-step draws stacked."""

from __future__ import annotations

import pytest
import torch
from mkgan_engine.train import rng

SEEDS = torch.tensor([0, 7, 2**32 - 1, 12345, 99], dtype=torch.int64)
FIRST = torch.tensor([0, 5, 1000, 2**31 + 3, 41], dtype=torch.int64)  # members at different steps


@pytest.mark.parametrize("window", [1, 3, 10])
@pytest.mark.parametrize("shape", [(1,), (7,), (2, 1, 3, 26, 26)], ids=str)
@pytest.mark.parametrize(
    ("per_step", "windowed"), [(rng.uniform, rng.uniform_window), (rng.normal, rng.normal_window)], ids=["uniform", "normal"]
)
def test_a_window_is_the_per_step_draws_stacked(per_step, windowed, shape, window):
    got = windowed(SEEDS, rng.Stream.NOISE_D, FIRST, window, shape)
    want = torch.stack([per_step(SEEDS, rng.Stream.NOISE_D, FIRST + w, shape) for w in range(window)])
    assert got.shape == (window, len(SEEDS), *shape) and got.dtype == torch.float32
    assert torch.equal(got, want)


def test_a_window_from_one_step_for_all_members():
    got = rng.uniform_window(SEEDS, rng.Stream.CROPS_G, 17, 4, (3,))
    want = torch.stack([rng.uniform(SEEDS, rng.Stream.CROPS_G, 17 + w, (3,)) for w in range(4)])
    assert torch.equal(got, want)


def test_draws_depend_on_seed_stream_and_step():
    base = rng.uniform(SEEDS, rng.Stream.CROPS_G, FIRST, (64,))
    assert not torch.equal(base, rng.uniform(SEEDS, rng.Stream.CROPS_D, FIRST, (64,)))
    assert not torch.equal(base, rng.uniform(SEEDS, rng.Stream.CROPS_G, FIRST + 1, (64,)))
    assert not torch.equal(base, rng.uniform(SEEDS + 1, rng.Stream.CROPS_G, FIRST, (64,)))
    assert float(base.min()) >= 0.0 and float(base.max()) < 1.0
    # A member's numbers do not depend on the others in the batch.
    assert torch.equal(base[2:3], rng.uniform(SEEDS[2:3], rng.Stream.CROPS_G, FIRST[2:3], (64,)))


def test_a_window_needs_at_least_one_step():
    with pytest.raises(ValueError, match="window"):
        rng.uniform_window(SEEDS, rng.Stream.CROPS_G, FIRST, 0, (1,))
