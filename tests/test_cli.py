"""The `mkgan-engine sr` command over good and bad inputs, interruption and resume."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from mkgan_engine.cli import app

SAMPLES = __import__("pathlib").Path(__file__).resolve().parents[1] / "samples"
QUICK = ["--kernelgan-iters", "20", "--zssr-iters", "20", "--device", "cpu", "--quiet"]


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def mixed_dir(tmp_path):
    """A directory with good and bad inputs of every kind the engine must survive."""
    d = tmp_path / "in"
    d.mkdir()
    rgb = cv2.imread(str(SAMPLES / "set5_bird.png"))[:96, :96]
    cv2.imwrite(str(d / "good.png"), rgb)
    cv2.imwrite(str(d / "grey.png"), cv2.cvtColor(rgb, cv2.COLOR_BGR2GRAY))
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 200, np.uint8)])
    rgba[:10, :10, 3] = 0
    cv2.imwrite(str(d / "rgba.png"), rgba)
    cv2.imwrite(str(d / "deep.png"), rgb.astype(np.uint16) * 257)
    cv2.imwrite(str(d / "tiny.png"), rgb[:40, :40])
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (d / "empty.jpg").write_bytes(b"")
    (d / "notes.txt").write_text("not an image")
    return d


def test_mixed_directory(mixed_dir, tmp_path):
    out = tmp_path / "out"
    result = invoke("sr", mixed_dir, "-o", out, "--masker", "none", "--kernel-model", "gaussian", *QUICK)
    assert result.exit_code == 1, result.output  # some inputs failed, the batch went on
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["kernelgan"]["kernel_model"] == "gaussian"
    status = {e["input"].split("/")[-1]: e for e in report["images"]}
    for name in ("good.png", "grey.png", "rgba.png", "deep.png"):
        assert status[name]["status"] == "ok", status[name]
    assert status["notes.txt"]["status"] == "skipped"
    assert status["corrupt.png"]["status"] == "failed" and "not a readable image" in status["corrupt.png"]["error"]
    assert status["empty.jpg"]["status"] == "failed" and "empty file" in status["empty.jpg"]["error"]
    assert status["tiny.png"]["status"] == "failed" and "64x64" in status["tiny.png"]["error"]

    grey = cv2.imread(str(out / "grey_x2.png"), cv2.IMREAD_UNCHANGED)
    assert grey.shape == (192, 192)
    rgba = cv2.imread(str(out / "rgba_x2.png"), cv2.IMREAD_UNCHANGED)
    assert rgba.shape == (192, 192, 4) and rgba[:16, :16, 3].max() < 60 and rgba[100, 100, 3] > 180
    deep = cv2.imread(str(out / "deep_x2.png"), cv2.IMREAD_UNCHANGED)
    assert deep.dtype == np.uint16 and deep.shape == (192, 192, 3)
    assert (out / "good_kernels.npz").exists() and (out / "good_kernel_0.mat").exists() and (out / "good_mask.png").exists()
    assert "psnr_y" in (out / "report.csv").read_text().splitlines()[0]
    assert not list(out.glob(".*.tmp"))


def test_usage_errors_exit_2(tmp_path, mixed_dir):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = invoke("sr", mixed_dir / "good.png", "-o", blocker / "sub", *QUICK)
    assert result.exit_code == 2 and "cannot write to output directory" in result.output
    result = invoke("sr", mixed_dir / "good.png", "-o", tmp_path / "o", "--masker", "yolo-sam", *QUICK)
    assert result.exit_code == 2 and "--yolo-weights" in result.output
    result = invoke("sr", tmp_path / "missing.png", "-o", tmp_path / "o", *QUICK)
    assert result.exit_code == 2 and "missing.png" in result.output
    assert invoke("sr", mixed_dir, "-o", tmp_path / "o", "--scale", "3").exit_code == 2
    result = invoke("sr", mixed_dir, "-o", tmp_path / "o", "--kernel-model", "spline")
    assert result.exit_code == 2 and "--kernel-model" in result.output


def test_interrupt_then_resume(tmp_path, monkeypatch):
    from mkgan_engine.pipeline import Engine

    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("a", "b", "c"):
        shutil.copy(SAMPLES / "set5_bird.png", inputs / f"{name}.png")
    out = tmp_path / "out"
    real_finish = Engine.finish  # the batch's training stage (after the prefetched read and mask)
    calls = []

    def interrupted_finish(self, prepared, *args, **kwargs):
        calls.append(prepared)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_finish(self, prepared, *args, **kwargs)

    monkeypatch.setattr(Engine, "finish", interrupted_finish)
    result = invoke("sr", inputs, "-o", out, "--masker", "none", "--pack", "1", *QUICK)  # one image at a time
    assert result.exit_code == 130
    report = json.loads((out / "report.json").read_text())
    assert report["interrupted"] and [e["status"] for e in report["images"]] == ["ok"]
    assert sorted(p.name for p in out.glob("*_x2.png")) == ["a_x2.png"]
    assert not list(out.glob(".*.tmp"))

    monkeypatch.setattr(Engine, "finish", real_finish)
    result = invoke("sr", inputs, "-o", out, "--masker", "none", "--skip-existing", *QUICK)
    assert result.exit_code == 0
    report = json.loads((out / "report.json").read_text())
    assert [e["status"] for e in report["images"]] == ["skipped", "ok", "ok"]


def test_library_errors_name_settings_and_the_cli_names_flags():
    from mkgan_engine.cli_flags import with_flags

    assert with_flags("sam_checkpoint x.pth does not match sam_type vit_b") == "--sam-checkpoint x.pth does not match --sam-type vit_b"
    assert with_flags("backend tensorrt needs a CUDA device (got device 'cpu')") == "--backend tensorrt needs a CUDA device (got device 'cpu')"
    assert with_flags("engines_dir /x: directory not found") == "--engines /x: directory not found"
