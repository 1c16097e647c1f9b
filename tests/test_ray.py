"""`mkgan-engine sr --ray` (mkgan_engine.distributed) on a local Ray cluster: the same kernels, SR
pixels, statuses and errors as a local run; a worker killed mid-image is retried; resume; Ray is
imported only when used. One 2-CPU Ray cluster is shared by the module (starting one takes seconds)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray")  # Ray Data's own settings, not ours

from mkgan_engine import distributed
from mkgan_engine.batch import InputFile, run_batch
from mkgan_engine.cli import _bare_ray, app
from mkgan_engine.config import EngineConfig, MaskerConfig
from mkgan_engine.pipeline import Engine
from mkgan_engine.report import Record
from mkgan_engine.train.config import ZSSRConfig

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
NAMES = ("baby", "bird", "butterfly")
CONFIG = EngineConfig(device="cpu", seed=3, masker=MaskerConfig(name="none"), kernel_estimator="kenet",
                      zssr=ZSSRConfig.preset("fast").with_(iterations=4, min_iterations=2, ensemble=1))
QUICK = ["--masker", "none", "--zssr-iters", "4", "--ensemble", "1", "--device", "cpu", "--seed", "3", "--quiet"]


@pytest.fixture(scope="module")
def cluster():
    """A local 2-CPU Ray cluster for the module; run_ray uses it as it is (and leaves it running)."""
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 2**20, logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture
def photos(tmp_path) -> Path:
    """Three 64x64 crops of the bundled Set5 samples."""
    d = tmp_path / "in"
    d.mkdir()
    for name in NAMES:
        cv2.imwrite(str(d / f"{name}.png"), cv2.imread(str(SAMPLES / f"set5_{name}.png"))[32:96, 32:96])
    return d


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def comparable(record: Record, out_dir: Path) -> dict:
    """A record without its timings, its output paths relative to ``out_dir``."""
    entry = record.to_json()
    entry.pop("timings_s")
    entry["outputs"] = {k: str(Path(v).relative_to(out_dir)) for k, v in entry["outputs"].items()}
    return json.loads(json.dumps(entry))


def statuses(out_dir: Path) -> list[tuple[str, str, str | None]]:
    return [(Path(e["input"]).name, e["status"], e["error"]) for e in json.loads((out_dir / "report.json").read_text())["images"]]


def test_ray_run_equals_the_local_run(cluster, photos, tmp_path):
    items = [InputFile(photos / f"{name}.png") for name in NAMES]
    local_out, ray_out = tmp_path / "local", tmp_path / "ray"
    local = [Record.of(result) for result in run_batch(Engine(CONFIG), items, out_dir=local_out)]
    remote = list(distributed.run_ray(CONFIG, items, ray_out, address=None, workers=2))
    assert [comparable(r, ray_out) for r in remote] == [comparable(r, local_out) for r in local]
    assert [r.status for r in remote] == ["ok"] * 3 and ray.is_initialized()  # the fixture's cluster stays
    for name in NAMES:
        assert np.array_equal(cv2.imread(str(ray_out / f"{name}_x2.png")), cv2.imread(str(local_out / f"{name}_x2.png")))
        with np.load(ray_out / f"{name}_kernels.npz") as a, np.load(local_out / f"{name}_kernels.npz") as b:
            assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)
    assert not list(ray_out.glob(".*"))  # no temporary file, no marker left


def crashing_worker(marker: Path) -> type:
    """An ImageWorker whose process dies (os._exit) in the middle of writing an image's outputs, once
    in all: the first atomic rename of the run, after its temporary file was written."""

    class CrashOnce(distributed.ImageWorker):
        def __call__(self, batch):
            import os

            rename = os.replace

            def dying_rename(source, target):
                try:
                    fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    return rename(source, target)
                os.write(fd, os.fsencode(source))
                os.close(fd)
                os._exit(1)  # killed mid-write: its temporary file stays behind

            os.replace = dying_rename
            try:
                return super().__call__(batch)
            finally:
                os.replace = rename

    return CrashOnce


def test_a_worker_killed_mid_image_is_retried_then_resume(cluster, photos, tmp_path, monkeypatch):
    out, marker = tmp_path / "out", tmp_path / "crashed"
    monkeypatch.setattr(distributed, "ImageWorker", crashing_worker(marker))
    result = invoke("sr", photos, "-o", out, "--ray", "auto", "--ray-workers", "2", *QUICK)
    assert marker.exists(), "no worker died: the test tested nothing"
    left = Path(marker.read_text())  # the temporary file the dead worker wrote and never renamed
    assert left.parent == out and left.name.startswith(".") and left.name.endswith(".tmp")
    assert result.exit_code == 0, result.output  # the retry succeeded: a retried image is an ordinary "ok"
    assert statuses(out) == [(f"{name}.png", "ok", None) for name in NAMES]
    assert sorted(p.name for p in out.glob("*_x2.png")) == [f"{name}_x2.png" for name in NAMES]
    assert not list(out.glob(".*"))  # the dead writer's temporary file was removed

    (out / "bird_x2.png").unlink()  # resume: only the missing image runs again
    result = invoke("sr", photos, "-o", out, "--ray", "auto", "--skip-existing", *QUICK)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())["images"]
    assert [e["status"] for e in report] == ["skipped", "ok", "skipped"]
    assert report[0]["error"] == "output exists (--skip-existing); record of the earlier run" and report[0]["regions"]
    assert (out / "bird_x2.png").exists() and not list(out.glob(".*"))


def test_an_image_that_kills_every_attempt_fails_alone(cluster, photos, tmp_path, monkeypatch):
    class DiesOnBird(distributed.ImageWorker):
        def __call__(self, batch):
            if any("bird" in str(path) for path in batch["path"]):
                os._exit(1)  # e.g. out of memory on this image, every time
            return super().__call__(batch)

    monkeypatch.setattr(distributed, "ImageWorker", DiesOnBird)
    items = [InputFile(photos / f"{name}.png") for name in NAMES]
    records = list(distributed.run_ray(CONFIG, items, tmp_path / "out", workers=2, max_retries=1))
    assert [r.status for r in records] == ["ok", "failed", "ok"]
    assert records[1].error.startswith("no result from the Ray workers: the worker died on each of the 2 attempt(s)")
    assert sorted(p.name for p in (tmp_path / "out").glob("*_x2.png")) == ["baby_x2.png", "butterfly_x2.png"]


def test_bad_inputs_fail_alone_as_in_a_local_run(cluster, photos, tmp_path):
    (photos / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    cv2.imwrite(str(photos / "tiny.png"), cv2.imread(str(photos / "bird.png"))[:40, :40])
    (photos / "notes.txt").write_text("not an image")
    for name in ("baby", "butterfly"):
        (photos / f"{name}.png").unlink()
    local = invoke("sr", photos, "-o", tmp_path / "local", *QUICK)
    remote = invoke("sr", photos, "-o", tmp_path / "ray", "--ray", "auto", *QUICK)
    assert local.exit_code == remote.exit_code == 1, (local.output, remote.output)
    assert statuses(tmp_path / "ray") == statuses(tmp_path / "local")
    assert {name: status for name, status, _ in statuses(tmp_path / "ray")} == {
        "notes.txt": "skipped", "bird.png": "ok", "corrupt.png": "failed", "tiny.png": "failed"}


def test_ray_options_and_usage_errors(tmp_path):
    assert _bare_ray(["sr", "in", "--ray"]) == ["sr", "in", "--ray", "auto"]
    assert _bare_ray(["sr", "in", "--ray", "-o", "out"]) == ["sr", "in", "--ray", "auto", "-o", "out"]
    assert _bare_ray(["sr", "in", "--ray", "head:6379"]) == ["sr", "in", "--ray", "head:6379"]
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.zeros((64, 64, 3), np.uint8))
    result = invoke("sr", image, "--ray", image, "-o", tmp_path / "out")  # an input where the address goes
    assert result.exit_code == 2 and "--ray" in result.output
    assert invoke("sr", image, "-o", tmp_path / "out", "--ray-workers", "2").exit_code == 2  # needs --ray
    with pytest.raises(ValueError, match="device cpu"):
        distributed.run_ray(CONFIG, [image], tmp_path / "out", gpus_per_worker=0.5)
    with pytest.raises(ConnectionError, match="no Ray cluster answers at 127.0.0.1:1"):  # at once, not minutes of retries
        distributed._probe("127.0.0.1:1")


def test_a_worker_that_cannot_see_the_paths_fails_its_images(tmp_path):
    image = tmp_path / "a.png"
    batch = {"index": np.array([0]), "path": np.array([str(image)]), "relative_dir": np.array(["."])}
    not_shared = distributed.ImageWorker(CONFIG, str(tmp_path), None, None, ".mkgan-ray-0123456789ab")
    record = json.loads(not_shared(batch)["record"][0])
    assert record["status"] == "failed" and "is not the driver's: every node must see it" in record["error"]
    no_cwd = distributed.ImageWorker(CONFIG, str(tmp_path), None, str(tmp_path / "elsewhere"), "x")
    record = json.loads(no_cwd(batch)["record"][0])
    assert record["status"] == "failed" and "driver's working directory" in record["error"]


def test_import_and_help_do_not_import_ray():
    code = ("import sys, mkgan_engine, mkgan_engine.cli\n"
            "from typer.testing import CliRunner\n"
            "result = CliRunner().invoke(mkgan_engine.cli.app, ['sr', '--help'])\n"
            "assert result.exit_code == 0 and '--ray' in result.output, result.output\n"
            "loaded = [m for m in sys.modules if m == 'ray' or m.startswith('ray.') or m == 'mkgan_engine.distributed']\n"
            "assert not loaded, loaded\n")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "COLUMNS": "200"})
