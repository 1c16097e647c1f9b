"""Counter-based random numbers for batched members.

Every member (region, image, seed) owns a seed; a draw is a pure function of
(seed, stream, step, index), so N members trained together draw exactly what each would draw
alone, the numbers are made on the device where they are used (no host round-trip per step), and
a restart only has to change one member's seed.

The hash is the 32-bit "lowbias32" integer mixer evaluated in int64 with explicit 16-bit splits of
the multiplications, so no intermediate exceeds 2**48 and results are identical on CPU and CUDA.
"""

from __future__ import annotations

from enum import IntEnum

import torch

_MASK32 = 0xFFFFFFFF



class Stream(IntEnum):
    """Every random stream of the trainers, in one place: independent uses never share numbers, and
    the batched-equals-alone promise rests on these values (changing one changes every result)."""

    INIT = 1  # generator initialisation (KernelGAN)
    CROPS_G = 2
    CROPS_D = 3
    NOISE_D = 4
    ZSSR_CROPS = 5
    ZSSR_AUGMENT = 6
    ZSSR_NOISE = 7
    ZSSR_INIT = 8  # + ZSSR_STAGE_STRIDE * stage for the x4 second stage
    ZSSR_REC = 9
    D_INIT = 101  # discriminator initialisation


ZSSR_STAGE_STRIDE = 16


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2**32 for x in [0, 2**32), without int64 overflow."""
    lo = x * (c & 0xFFFF)
    hi = ((x * (c >> 16)) & 0xFFFF) << 16
    return (lo + hi) & _MASK32


def hash32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 mixer; x: int64 tensor of values in [0, 2**32) -> same shape, same range."""
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    x = x ^ (x >> 16)
    return x


def _keys(seeds: torch.Tensor, stream: int, step: int | torch.Tensor) -> torch.Tensor:
    """One 32-bit key per member for (seed, stream, step); seeds: int64 (M,) -> (M,)."""
    h = hash32(seeds.to(torch.int64) & _MASK32)
    h = hash32(h ^ (stream * 0x9E3779B9 & _MASK32))
    if isinstance(step, torch.Tensor):
        step = step.to(device=seeds.device, dtype=torch.int64)
    return hash32(h ^ (step & _MASK32))


def uniform(
    seeds: torch.Tensor, stream: int, step: int | torch.Tensor, shape: tuple[int, ...]
) -> torch.Tensor:
    """Uniform float32 numbers in [0, 1).

    seeds: int64 (M,) on the target device; step: int or int64 (M,) (per-member step counters);
    returns float32 (M, *shape) on seeds.device, 24 bits of resolution.
    """
    keys = _keys(seeds, stream, step)
    n = 1
    for s in shape:
        n *= s
    index = torch.arange(n, device=seeds.device, dtype=torch.int64)
    bits = hash32(keys[:, None] ^ hash32(index)[None, :])
    return ((bits >> 8).to(torch.float32) * (1.0 / 16777216.0)).reshape(seeds.shape[0], *shape)


def normal(
    seeds: torch.Tensor, stream: int, step: int | torch.Tensor, shape: tuple[int, ...]
) -> torch.Tensor:
    """Standard normal float32 (M, *shape) by Box-Muller on two counter-based uniforms."""
    n = 1
    for s in shape:
        n *= s
    u = uniform(seeds, stream, step, (2, n))
    u1 = u[:, 0].clamp_min(1.0 / 16777216.0)
    z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * torch.pi * u[:, 1])
    return z.reshape(seeds.shape[0], *shape)


def member_generator(seed: int, stream: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch.Generator for one member's one-off draws (e.g. weight init), seeded from (seed, stream)."""
    key = int(_keys(torch.tensor([seed]), stream, 0)[0])
    gen = torch.Generator(device=device)
    gen.manual_seed(key)
    return gen
