"""Masked-crop C++/CUDA op (cpp_ext/) against the pure-PyTorch reference, and the fallback logic.

The first test that needs the op JIT-builds it (about a minute on a small CPU; later sessions
reuse torch's per-user extension cache). Parity is exact: same centres, bit-identical crops.
"""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import torch

import mkgan_engine.cpp_ext as cpp_ext
from mkgan_engine.train import rng
from mkgan_engine.train.masked_crop import gather_crops, gather_crops_reference

LOGGER = "mkgan_engine.cpp_ext"
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


@pytest.fixture(scope="module")
def op():
    if cpp_ext._disabled_reason():
        pytest.skip(cpp_ext._disabled_reason())
    built = cpp_ext.load_masked_crop()
    if built is None:
        pytest.skip(f"masked-crop extension unavailable here: {cpp_ext.masked_crop_status()['reason']}")
    return built


def _case(m, c, h, w, n, *, seed=0, zero_fraction=0.5, device="cpu", dtype=torch.float32):
    """images (M,C,H,W), cdf (M,H*W) with zero-probability pixels, uniforms (M,n) incl. 0 and ~1."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(m, c, h, w, generator=g).to(dtype)
    prob = torch.rand(m, h * w, generator=g)
    prob[torch.rand(m, h * w, generator=g) < zero_fraction] = 0.0
    prob[:, 0] += 1e-3  # at least one non-zero pixel per member
    cdf = prob.cumsum(1)
    uniforms = torch.rand(m, n, generator=g)
    uniforms[:, 0] = 0.0
    if n > 1:
        uniforms[:, 1] = 1.0 - 2.0**-24
    return images.to(device), cdf.to(device), uniforms.to(device)


def _assert_same(got, want):
    crops, centres = got
    ref_crops, ref_centres = want
    assert crops.dtype == ref_crops.dtype and crops.shape == ref_crops.shape
    assert centres.dtype == torch.int64 and centres.shape == ref_centres.shape
    assert torch.equal(centres.cpu(), ref_centres.cpu())
    assert torch.equal(crops.cpu(), ref_crops.cpu())


SHAPES = [
    # (M, C, H, W, n, crop)
    (1, 3, 64, 64, 16, 32),
    (3, 3, 37, 53, 50, 8),  # even crop, non-square
    (2, 1, 31, 17, 40, 7),  # odd crop, narrow image
    (2, 3, 24, 40, 10, 24),  # crop as tall as the image: top is always 0
    (4, 2, 9, 11, 30, 1),  # 1-pixel crops: crop == the centre pixel
    (1, 3, 5, 5, 20, 5),  # crop == whole image
]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_cpu_parity(op, shape, dtype):
    m, c, h, w, n, cs = shape
    images, cdf, uniforms = _case(m, c, h, w, n, seed=h * w + n, dtype=dtype)
    _assert_same(op(images, cdf, uniforms, cs), gather_crops_reference(images, cdf, uniforms, cs))


def test_edges_ties_and_zero_probability(op):
    """Corner-heavy maps (clamping), exact ties u * total == cdf[i] (right=True), dead regions."""
    m, c, h, w, cs = 3, 3, 20, 28, 9
    images = torch.arange(m * c * h * w, dtype=torch.float32).reshape(m, c, h, w)
    prob = torch.zeros(m, h, w)
    prob[0, 0, 0] = 64  # top-left corner only
    prob[0, -1, -1] = 64  # bottom-right corner
    prob[0, 0, -1] = 128  # top-right corner
    prob[1, 5:9, 3:12] = 2.0  # a block; zero elsewhere
    prob[1, -1, :] = 1.0  # and the bottom row
    # member 2: all zero -> every draw lands on the last pixel (clamped searchsorted)
    cdf = prob.reshape(m, -1).cumsum(1)
    # totals are powers of two for members 0 (256); uniforms k/256 give exact ties with the cdf
    uniforms = torch.cat([torch.arange(0, 256, 8, dtype=torch.float32) / 256.0,
                          torch.tensor([0.25, 0.5, 0.75, 1.0 - 2.0**-24])])[None].repeat(m, 1)
    got = op(images, cdf, uniforms, cs)
    want = gather_crops_reference(images, cdf, uniforms, cs)
    _assert_same(got, want)
    centres = got[1]
    flat = centres[..., 0] * w + centres[..., 1]
    assert (prob.reshape(m, -1)[:2].gather(1, flat[:2]) > 0).all()  # never a zero-probability pixel
    assert (flat[2] == h * w - 1).all()
    # member 0: every crop sits in a corner, clamped inside the image
    corner_sets = {(0, 0), (h - 1, w - 1), (0, w - 1)}
    assert {tuple(p) for p in centres[0].tolist()} <= corner_sets
    top_left_pixel = images[0, :, :cs, :cs]
    hits = (centres[0] == torch.tensor([0, 0])).all(1)
    assert hits.any() and torch.equal(got[0][0][hits][0], top_left_pixel)


def test_counter_rng_uniforms_and_gather_crops_dispatch(op):
    m, h, w, cs, n = 4, 48, 64, 16, 32
    images, cdf, _ = _case(m, 3, h, w, 1, seed=7, zero_fraction=0.9)
    uniforms = rng.uniform(torch.arange(m, dtype=torch.int64), rng.Stream.CROPS_G, 5, (n,))
    want = gather_crops_reference(images, cdf, uniforms, cs)
    _assert_same(op(images, cdf, uniforms, cs), want)
    _assert_same(gather_crops(images, cdf, uniforms, cs), want)  # goes through the compiled op


def test_non_contiguous_inputs_and_empty_draws(op):
    images, cdf, uniforms = _case(2, 3, 30, 40, 12, seed=3)
    images_nc = images.permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2)  # same values, other strides
    assert not images_nc.is_contiguous()
    cdf_wide = torch.stack([cdf, cdf], dim=2)[..., 0]  # strided view
    uniforms_nc = torch.stack([uniforms, uniforms], dim=2)[..., 1]
    _assert_same(op(images_nc, cdf_wide, uniforms_nc, 11), gather_crops_reference(images, cdf, uniforms, 11))
    crops, centres = op(images, cdf, uniforms[:, :0], 11)
    assert crops.shape == (2, 0, 3, 11, 11) and centres.shape == (2, 0, 2)


def test_bad_arguments_raise(op):
    images, cdf, uniforms = _case(2, 3, 16, 20, 4)
    with pytest.raises(RuntimeError, match="crop_size"):
        op(images, cdf, uniforms, 17)
    with pytest.raises(RuntimeError, match="float32"):
        op(images, cdf.double(), uniforms, 8)
    with pytest.raises(RuntimeError, match="H\\*W"):
        op(images, cdf[:, :-1], uniforms, 8)


def test_load_is_memoised_and_status_reports_build(op):
    assert cpp_ext.load_masked_crop() is op
    status = cpp_ext.masked_crop_status()
    assert status["built"] is True and status["backend"] in {"cpp-cpu", "cpp-cuda"}
    assert status["reason"] is None and status["build_dir"] and "built" in status["detail"]


# ------------------------------------------------------------------------------ fallback selection
@pytest.fixture
def fresh_loader(monkeypatch, caplog):
    """A loader that has not attempted a build in this process (restored afterwards)."""
    monkeypatch.setattr(cpp_ext, "_state", None)
    monkeypatch.setattr(cpp_ext, "_logged", set())
    monkeypatch.delenv(cpp_ext.DISABLE_ENV, raising=False)
    monkeypatch.setenv(cpp_ext.CUDA_ENV, "0")
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    return caplog


def _fallback_lines(caplog):
    return [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.INFO]


def test_env_var_forces_fallback(fresh_loader, monkeypatch):
    monkeypatch.setenv(cpp_ext.DISABLE_ENV, "1")
    assert cpp_ext.load_masked_crop() is None
    assert cpp_ext.load_masked_crop() is None
    lines = _fallback_lines(fresh_loader)
    assert len(lines) == 1
    assert "pure-PyTorch fallback" in lines[0].getMessage() and cpp_ext.DISABLE_ENV in lines[0].getMessage()
    status = cpp_ext.masked_crop_status(build=True)
    assert status["built"] is False and status["backend"] == "pytorch" and cpp_ext.DISABLE_ENV in status["reason"]
    images, cdf, uniforms = _case(2, 3, 16, 20, 5)
    _assert_same(gather_crops(images, cdf, uniforms, 8), gather_crops_reference(images, cdf, uniforms, 8))


def test_build_failure_falls_back_with_one_line(fresh_loader, monkeypatch):
    from torch.utils import cpp_extension

    calls = []

    def failing_load(*args, **kwargs):
        calls.append(kwargs.get("name"))
        raise RuntimeError("Error building extension 'x': [1/2] c++ -c masked_crop.cpp\n"
                           "masked_crop.cpp:1:1: error: simulated failure\nninja: build stopped")

    monkeypatch.setattr(cpp_extension, "load", failing_load)
    assert cpp_ext.load_masked_crop() is None
    assert cpp_ext.load_masked_crop() is None  # memoised: no second attempt, no second line
    assert len(calls) == 1
    lines = _fallback_lines(fresh_loader)
    assert len(lines) == 1
    message = lines[0].getMessage()
    assert lines[0].levelno == logging.WARNING and "\n" not in message
    assert "pure-PyTorch fallback" in message and "build failed" in message and "simulated failure" in message
    status = cpp_ext.masked_crop_status(build=True)
    assert status["built"] is False and status["attempted"] is True and "simulated failure" in status["reason"]
    images, cdf, uniforms = _case(1, 3, 16, 20, 5)
    _assert_same(gather_crops(images, cdf, uniforms, 8), gather_crops_reference(images, cdf, uniforms, 8))


def test_missing_compiler_falls_back(fresh_loader, monkeypatch):
    monkeypatch.setenv("CXX", "/nonexistent/bin/c++")
    assert cpp_ext.load_masked_crop() is None
    lines = _fallback_lines(fresh_loader)
    assert len(lines) == 1 and "no C++ compiler" in lines[0].getMessage()


def test_status_before_build_and_cheap_import():
    code = ("import sys, mkgan_engine.cpp_ext as c; s = c.masked_crop_status(); "
            "assert s['built'] is False and s['attempted'] is False, s; "
            "assert 'torch.utils.cpp_extension' not in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


# ---------------------------------------------------------------------------------------- CUDA
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_cuda_parity(op, dtype):
    assert getattr(op, "with_cuda", False), f"CUDA kernels not built: {cpp_ext.masked_crop_status()}"
    for shape in SHAPES + [(8, 3, 300, 420, 256, 64)]:
        m, c, h, w, n, cs = shape
        images, cdf, uniforms = _case(m, c, h, w, n, seed=h + w + n, device="cuda", dtype=dtype)
        got = op(images, cdf, uniforms, cs)
        assert got[0].is_cuda and got[1].is_cuda
        _assert_same(got, gather_crops_reference(images, cdf, uniforms, cs))
        # and against the CPU reference, so that CUDA's searchsorted is not the only witness
        _assert_same(got, gather_crops_reference(images.cpu(), cdf.cpu(), uniforms.cpu(), cs))
    seeds = torch.arange(4, dtype=torch.int64, device="cuda")
    images, cdf, _ = _case(4, 3, 64, 80, 1, seed=11, zero_fraction=0.95, device="cuda", dtype=dtype)
    uniforms = rng.uniform(seeds, rng.Stream.CROPS_D, 3, (64,))
    _assert_same(gather_crops(images, cdf, uniforms, 26), gather_crops_reference(images, cdf, uniforms, 26))


@pytest.mark.gpu
def test_cuda_non_default_stream_and_device_guard(op):
    assert getattr(op, "with_cuda", False), f"CUDA kernels not built: {cpp_ext.masked_crop_status()}"
    images, cdf, uniforms = _case(3, 3, 50, 60, 32, seed=5, device="cuda")
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        got = op(images, cdf, uniforms, 16)
    stream.synchronize()
    _assert_same(got, gather_crops_reference(images, cdf, uniforms, 16))
