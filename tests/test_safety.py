"""Never lose or fake a result: inputs are never overwritten, outputs never re-ingested, a wrong-size
ground truth is not scored, a bad suffix is a usage error, SIGTERM writes the report, and concurrent
atomic writes never collide."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from mkgan_engine.cli import app
from mkgan_engine.imageio import write_bytes_atomic

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
QUICK = ["--zssr-iters", "12", "--device", "cpu", "--masker", "none", "--quiet"]


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def _photo(path: Path, size: int = 80, offset: int = 0) -> Path:
    image = cv2.imread(str(SAMPLES / "set5_bird.png"))[offset : offset + size, offset : offset + size]
    cv2.imwrite(str(path), image)
    return path


def test_an_output_that_would_overwrite_its_input_is_refused(tmp_path):
    photo = _photo(tmp_path / "p.png")
    before = photo.read_bytes()
    result = invoke("sr", photo, "-o", tmp_path, "--suffix", "", *QUICK)
    assert result.exit_code == 2
    assert "would overwrite the input" in result.output and "p.png" in result.output
    assert photo.read_bytes() == before
    jpeg = tmp_path / "q.jpg"
    cv2.imwrite(str(jpeg), cv2.imread(str(photo)))
    result = invoke("sr", jpeg, "-o", tmp_path, "--suffix", "", "--ext", "same", *QUICK)
    assert result.exit_code == 2 and "q.jpg" in result.output


def test_inputs_with_the_same_outputs_are_refused(tmp_path):
    _photo(tmp_path / "x.png")
    _photo(tmp_path / "x.jpg", offset=8)
    result = invoke("sr", tmp_path, "-o", tmp_path / "out", *QUICK)
    assert result.exit_code == 2 and "x.png" in result.output and "x.jpg" in result.output
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    a, b = _photo(tmp_path / "a" / "y.png"), _photo(tmp_path / "b" / "y.png", offset=8)
    result = invoke("sr", a, b, "-o", tmp_path / "out", *QUICK)
    assert result.exit_code == 2 and str(a) in result.output and str(b) in result.output
    assert not (tmp_path / "out" / "y_x2.png").exists()


def test_outputs_in_the_input_folder_are_not_taken_as_inputs(tmp_path):
    _photo(tmp_path / "p.png")
    for _ in range(2):
        result = invoke("sr", tmp_path, "-o", tmp_path, "--save", "kernels,masks,previews", *QUICK)
        assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    done = [Path(e["input"]).name for e in report["images"] if e["status"] == "ok"]
    skipped = {Path(e["input"]).name: e["error"] for e in report["images"] if e["status"] == "skipped"}
    assert done == ["p.png"]
    own = ("p_x2.png", "p_mask.png", "p_preview.png", "p_kernels.npz", "p_kernel_0.mat", "report.json", "report.csv")
    assert skipped == {name: "an output of mkgan-engine" for name in own}
    assert not list(tmp_path.glob("*_x2_x2*"))


def test_a_ground_truth_of_the_wrong_size_is_not_scored(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "gt").mkdir()
    photo = _photo(tmp_path / "in" / "p.png")
    cv2.imwrite(str(tmp_path / "gt" / "p.png"), cv2.imread(str(SAMPLES / "hr" / "set5_bird.png"))[:150, :170])
    result = invoke("sr", photo, "-o", tmp_path / "out", "--gt-dir", tmp_path / "gt", *QUICK)
    assert result.exit_code == 0, result.output
    (entry,) = json.loads((tmp_path / "out" / "report.json").read_text())["images"]
    assert entry["status"] == "ok" and entry["metrics"] is None
    assert "170x150" in entry["metrics_error"] and "160x160" in entry["metrics_error"]


def test_a_bad_suffix_template_is_a_usage_error(tmp_path):
    photo = _photo(tmp_path / "p.png")
    result = invoke("sr", photo, "-o", tmp_path / "out", "--suffix", "{foo}", *QUICK)
    assert result.exit_code == 2 and "--suffix" in result.output


def test_sigterm_writes_the_report_and_a_rerun_completes_the_batch(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(4):
        _photo(inputs / f"p{i}.png", size=96, offset=8 * i)
    args = [sys.executable, "-m", "mkgan_engine.cli", "sr", str(inputs), "--zssr-iters", "60", "--device", "cpu",
            "--masker", "none", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # the reference one image at a time, the interrupted run in packs of two (stopped during the second)
    reference = subprocess.run(args + ["-o", str(tmp_path / "ref"), "--pack", "1"], env=env, capture_output=True, text=True)
    assert reference.returncode == 0, reference.stderr

    out = tmp_path / "out"
    process = subprocess.Popen(args + ["-o", str(out), "--pack", "2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "p0_x2.png").exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    report = json.loads((out / "report.json").read_text())
    assert report["interrupted"] is True
    assert not list(out.rglob("*.tmp"))

    rerun = subprocess.run(args + ["-o", str(out), "--skip-existing"], env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    for i in range(4):
        ours = cv2.imread(str(out / f"p{i}_x2.png"), cv2.IMREAD_UNCHANGED)
        theirs = cv2.imread(str(tmp_path / "ref" / f"p{i}_x2.png"), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(ours, theirs), f"p{i}"
    assert not list(out.rglob("*.tmp"))


def test_concurrent_atomic_writes_never_collide_or_tear(tmp_path):
    target = tmp_path / "shared.bin"
    payloads = [bytes([i]) * 200_000 for i in range(4)]
    errors: list[BaseException] = []

    def writer(data: bytes) -> None:
        try:
            for _ in range(25):
                write_bytes_atomic(target, data)
        except BaseException as error:  # noqa: BLE001 - collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert target.read_bytes() in payloads
    assert not list(tmp_path.glob("*.tmp"))


def test_a_truncated_jpeg_fails_with_its_name_and_the_batch_goes_on(tmp_path):
    good = _photo(tmp_path / "good.png")
    data = cv2.imencode(".jpg", cv2.imread(str(SAMPLES / "set5_bird.png")))[1].tobytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    result = invoke("sr", tmp_path / "cut.jpg", good, "-o", tmp_path / "out", *QUICK)
    assert result.exit_code == 1
    status = {Path(e["input"]).name: e for e in json.loads((tmp_path / "out" / "report.json").read_text())["images"]}
    assert status["cut.jpg"]["status"] == "failed" and "truncated" in status["cut.jpg"]["error"]
    assert "cut.jpg" in status["cut.jpg"]["error"]
    assert status["good.png"]["status"] == "ok"


def test_yolo_weights_alone_are_not_silently_ignored(tmp_path):
    photo = _photo(tmp_path / "p.png")
    weights = tmp_path / "yolov8n.pt"
    weights.write_bytes(b"")
    result = invoke("sr", photo, "-o", tmp_path / "out", "--yolo-weights", weights, "--zssr-iters", "5", "--quiet")
    assert result.exit_code == 2 and "--sam-checkpoint" in result.output
    assert not (tmp_path / "out" / "p_x2.png").exists()


def test_quiet_still_lists_failed_images_on_stderr(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    good = _photo(tmp_path / "good.png")
    completed = subprocess.run([sys.executable, "-m", "mkgan_engine.cli", "sr", str(tmp_path / "broken.png"), str(good),
                                "-o", str(tmp_path / "out"), *QUICK], capture_output=True, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert completed.returncode == 1
    assert "broken.png" in completed.stderr and "failed" in completed.stderr
    assert completed.stdout == ""
    entries = json.loads((tmp_path / "out" / "report.json").read_text())["images"]
    assert [e["size_lr"] for e in entries if e["status"] == "ok"] == [[80, 80]]


def test_alpha_is_never_dropped_silently_and_gif_keeps_honest_bytes(tmp_path):
    rgb = cv2.imread(str(SAMPLES / "set5_bird.png"))[:80, :80]
    cv2.imwrite(str(tmp_path / "a.png"), np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)]))
    result = invoke("sr", tmp_path / "a.png", "-o", tmp_path / "out", "--ext", "jpg", *QUICK)
    assert result.exit_code == 1
    (entry,) = json.loads((tmp_path / "out" / "report.json").read_text())["images"]
    assert entry["status"] == "failed" and "alpha" in entry["error"]

    from PIL import Image

    Image.fromarray(rgb[..., ::-1]).save(tmp_path / "g.gif")
    result = invoke("sr", tmp_path / "g.gif", "-o", tmp_path / "out2", "--ext", "same", *QUICK)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out2" / "g_x2.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "out2" / "g_x2.gif").exists()


def test_a_resumed_report_describes_the_whole_batch(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    _photo(inputs / "a.png")
    invoke("sr", inputs, "-o", tmp_path / "out", *QUICK)
    _photo(inputs / "b.png", offset=8)
    result = invoke("sr", inputs, "-o", tmp_path / "out", "--skip-existing", *QUICK)
    assert result.exit_code == 0, result.output
    status = {Path(e["input"]).name: e for e in json.loads((tmp_path / "out" / "report.json").read_text())["images"]}
    assert status["b.png"]["status"] == "ok"
    assert status["a.png"]["status"] == "skipped" and status["a.png"]["regions"]
    assert status["a.png"]["outputs"]["sr"].endswith("a_x2.png")


def test_broken_links_and_folders_are_listed_not_dropped(tmp_path):
    from mkgan_engine.batch import collect_inputs

    _photo(tmp_path / "p.png")
    (tmp_path / "sub").mkdir()
    (tmp_path / "dead.png").symlink_to(tmp_path / "nowhere.png")
    images, ignored = collect_inputs([tmp_path], sr_suffix="_x2")
    assert [i.path.name for i in images] == ["p.png"]
    assert {p.name: why for p, why in ignored} == {"dead.png": "broken symbolic link",
                                                  "sub": "a folder (use --recursive to include it)"}


def test_dry_run_lists_what_would_happen_and_writes_nothing(tmp_path):
    _photo(tmp_path / "p.png")
    (tmp_path / "notes.txt").write_text("x")
    out = tmp_path / "out"
    result = invoke("sr", tmp_path, "-o", out, "--dry-run", *QUICK)
    assert result.exit_code == 0, result.output
    assert "p.png" in result.output and "process" in result.output and "80x80" in result.output
    assert "notes.txt" in result.output and "not an image file" in result.output
    assert not out.exists()


def test_output_formats_keep_alpha_and_depth_and_honour_the_quality(tmp_path):
    rgb = cv2.imread(str(SAMPLES / "set5_bird.png"))[:80, :80]
    cv2.imwrite(str(tmp_path / "a.png"), np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)]))
    cv2.imwrite(str(tmp_path / "d.png"), rgb.astype(np.uint16) * 257)
    assert invoke("sr", tmp_path / "a.png", "-o", tmp_path / "w", "--ext", "webp", *QUICK).exit_code == 0
    assert cv2.imread(str(tmp_path / "w" / "a_x2.webp"), cv2.IMREAD_UNCHANGED).shape == (160, 160, 4)
    assert invoke("sr", tmp_path / "d.png", "-o", tmp_path / "t", "--ext", "tif", *QUICK).exit_code == 0
    assert cv2.imread(str(tmp_path / "t" / "d_x2.tif"), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    sizes = []
    for quality in ("30", "95"):
        out = tmp_path / f"q{quality}"
        assert invoke("sr", tmp_path / "d.png", "-o", out, "--ext", "jpg", "--jpeg-quality", quality, *QUICK).exit_code == 0
        sizes.append((out / "d_x2.jpg").stat().st_size)
    assert sizes[0] < 0.8 * sizes[1]


def test_two_concurrent_runs_into_one_folder_neither_fail_nor_tear(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(2):
        _photo(inputs / f"p{i}.png", offset=8 * i)
    args = [sys.executable, "-m", "mkgan_engine.cli", "sr", str(inputs), "-o", str(tmp_path / "out"), *QUICK]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    for run in runs:
        _, stderr = run.communicate(timeout=300)
        assert run.returncode == 0, stderr
    single = subprocess.run(args[:-len(QUICK) - 2] + ["-o", str(tmp_path / "single"), *QUICK], env=env, capture_output=True)
    assert single.returncode == 0
    for i in range(2):
        assert (tmp_path / "out" / f"p{i}_x2.png").read_bytes() == (tmp_path / "single" / f"p{i}_x2.png").read_bytes()
    assert not list((tmp_path / "out").glob(".*.tmp"))
    assert json.loads((tmp_path / "out" / "report.json").read_text())["counts"]["ok"] == 2


def test_a_full_disk_while_writing_the_report_is_an_error_not_a_traceback(tmp_path, monkeypatch):
    import errno

    import mkgan_engine.report as report_module

    photo = _photo(tmp_path / "p.png")

    def full_disk(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(report_module, "write_bytes_atomic", full_disk)
    result = CliRunner().invoke(app, ["sr", str(photo), "-o", str(tmp_path / "out"), *QUICK])
    assert result.exit_code == 1, result.output
    assert "could not write the report" in result.output and "No space left" in result.output
    assert (tmp_path / "out" / "p_x2.png").exists()
    assert not list((tmp_path / "out").glob(".*.tmp"))


def test_an_atomic_write_that_fails_leaves_nothing_behind(tmp_path, monkeypatch):
    import errno

    target = tmp_path / "x.png"
    target.write_bytes(b"old")

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError, match="No space"):
        write_bytes_atomic(target, b"new")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]
