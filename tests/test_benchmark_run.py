"""benchmarks/run.py bookkeeping: rows are saved as they come, a rerun resumes, and rows measured
under other settings are never mixed into one table (bicubic only: no training)."""

from __future__ import annotations

import csv
import importlib.util
import shutil
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples"


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def _rows(out: Path) -> list[dict]:
    with open(out / "runs.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_run_resumes_and_refuses_other_settings(tmp_path, capsys):
    degrade, run = _script("degrade"), _script("run")
    photos = tmp_path / "images" / "set5"
    photos.mkdir(parents=True)
    shutil.copy(SAMPLES / "hr" / "set5_bird.png", photos / "bird.png")
    data, out = tmp_path / "data", tmp_path / "out"
    degrade.main(["--protocol", "S", "--images", str(tmp_path / "images"), "--sets", "set5", "--max-side", "96",
                  "--out", str(data)])
    common = ["--data", str(data), "--methods", "bicubic", "--device", "cpu", "--out", str(out)]

    run.main(common + ["--seeds", "0"])
    (first,) = _rows(out)
    assert (first["image"], first["method"], first["seed"]) == ("set5_bird", "bicubic", "0")
    assert float(first["psnr_y"]) > 15

    capsys.readouterr()
    run.main(common + ["--seeds", "0,1"])  # one more seed: seed 0 is kept, not run again
    assert "resuming: 1 runs" in capsys.readouterr().out
    rows = _rows(out)
    assert [r["seed"] for r in rows] == ["0", "1"] and rows[0] == first
    summary = (out / "summary.md").read_text()
    assert "1 images x 2 seeds" in summary
    assert f"| bicubic | {float(first['psnr_y']):.2f} |" in summary  # the per-image table

    with pytest.raises(SystemExit, match="other settings"):
        run.main(common + ["--seeds", "0", "--preset", "paper"])
    assert _rows(out) == rows
