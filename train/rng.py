"""Counter-based random numbers for batched members.

Every member (region, image, seed) owns a seed; a draw is a pure function of
(seed, stream, step, index), so N members trained together draw exactly what each would draw
alone, the numbers are made on the device where they are used (no host round-trip per step), and
a restart only has to change one member's seed. The draws of a window of W consecutive steps come
in one call (:func:`uniform_window`, :func:`normal_window`: the per-step numbers, stacked).

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
    """(x * c) mod 2**32 for x in [0, 2**32), without int64 overflow (a new tensor; in-place steps
    keep the temporaries of a large window few)."""
    out = x * (c >> 16)
    out &= 0xFFFF
    out <<= 16
    out += x * (c & 0xFFFF)
    out &= _MASK32
    return out


def hash32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 mixer; x: int64 tensor of values in [0, 2**32) -> a new tensor, same shape and range."""
    x = x & _MASK32
    x ^= x >> 16
    x = _mul32(x, 0x7FEB352D)
    x ^= x >> 15
    x = _mul32(x, 0x846CA68B)
    x ^= x >> 16
    return x


def _keys(seeds: torch.Tensor, stream: int, step: int | torch.Tensor) -> torch.Tensor:
    """32-bit keys for (seed, stream, step); seeds: int64 (M,); step: int, or an int64 tensor that
    broadcasts against (M,) (a scalar, (M,), or (W, M) for a window) -> the broadcast shape."""
    h = hash32(seeds.to(torch.int64) & _MASK32)
    h = hash32(h ^ (stream * 0x9E3779B9 & _MASK32))
    if isinstance(step, torch.Tensor):
        step = step.to(device=seeds.device, dtype=torch.int64)
    return hash32(h ^ (step & _MASK32))


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _uniform_from_keys(keys: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Uniform float32 in [0, 1) (24 bits) for int64 keys (*lead,) -> (*lead, *shape): number i of a
    key is hash32(key ^ hash32(i)), i over the flattened ``shape``."""
    index = torch.arange(_numel(shape), device=keys.device, dtype=torch.int64)
    bits = hash32(keys[..., None] ^ hash32(index))
    return ((bits >> 8).to(torch.float32) * (1.0 / 16777216.0)).reshape(*keys.shape, *shape)


def _normal_from_keys(keys: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Standard normal float32 (*lead, *shape) by Box-Muller on the key's uniforms (2, n)."""
    n = _numel(shape)
    u = _uniform_from_keys(keys, (2, n))
    u1 = u[..., 0, :].clamp_min(1.0 / 16777216.0)
    z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * torch.pi * u[..., 1, :])
    return z.reshape(*keys.shape, *shape)


def _window_steps(first_step: int | torch.Tensor, window: int, device: torch.device) -> torch.Tensor:
    """int64 (W, M) (or (W, 1) for an int) steps first_step + 0 .. W-1."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    offsets = torch.arange(window, device=device, dtype=torch.int64)
    if isinstance(first_step, torch.Tensor):
        return offsets[:, None] + first_step.to(device=device, dtype=torch.int64).reshape(1, -1)
    return offsets[:, None] + first_step


def uniform(
    seeds: torch.Tensor, stream: int, step: int | torch.Tensor, shape: tuple[int, ...]
) -> torch.Tensor:
    """Uniform float32 numbers in [0, 1).

    seeds: int64 (M,) on the target device; step: int or int64 (M,) (per-member step counters);
    returns float32 (M, *shape) on seeds.device, 24 bits of resolution.
    """
    return _uniform_from_keys(_keys(seeds, stream, step), shape)


def normal(
    seeds: torch.Tensor, stream: int, step: int | torch.Tensor, shape: tuple[int, ...]
) -> torch.Tensor:
    """Standard normal float32 (M, *shape) by Box-Muller on two counter-based uniforms."""
    return _normal_from_keys(_keys(seeds, stream, step), shape)


def uniform_window(
    seeds: torch.Tensor, stream: int, first_step: int | torch.Tensor, window: int, shape: tuple[int, ...]
) -> torch.Tensor:
    """The draws of ``window`` consecutive steps in one call: float32 (W, M, *shape) whose [w] is
    ``uniform(seeds, stream, first_step + w, shape)`` bit for bit. first_step: int or int64 (M,)
    (members may be at different steps)."""
    return _uniform_from_keys(_keys(seeds, stream, _window_steps(first_step, window, seeds.device)), shape)


def normal_window(
    seeds: torch.Tensor, stream: int, first_step: int | torch.Tensor, window: int, shape: tuple[int, ...]
) -> torch.Tensor:
    """:func:`normal` for ``window`` consecutive steps: float32 (W, M, *shape), [w] equal bit for bit
    to ``normal(seeds, stream, first_step + w, shape)``."""
    return _normal_from_keys(_keys(seeds, stream, _window_steps(first_step, window, seeds.device)), shape)


def member_generator(seed: int, stream: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch.Generator for one member's one-off draws (e.g. weight init), seeded from (seed, stream)."""
    key = int(_keys(torch.tensor([seed]), stream, 0)[0])
    gen = torch.Generator(device=device)
    gen.manual_seed(key)
    return gen
