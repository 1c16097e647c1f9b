"""One record type: the JSON entry, the CSV row and the CLI's summary row come from the same Record."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from mkgan_engine import EngineConfig, RegionMap
from mkgan_engine.pipeline import RegionResult, Result
from mkgan_engine.report import CSV_COLUMNS, SUMMARY_COLUMNS, Record, Report, earlier_records


def _result() -> Result:
    kernel = np.zeros((13, 13), np.float32)
    kernel[6, 6] = 1.0
    region = RegionResult(0, "whole image", "none", 1.0, kernel, estimator="kenet",
                          zssr={"iterations": 40, "final_lr": 1e-4, "loss": 0.01, "rec_error": 0.02})
    return Result(input="in/a.png", region_map=RegionMap.single((64, 64), reason="one region"), regions=[region],
                  timings={"read": 0.0104, "mask": 1.0, "kernels": 2.0, "zssr": 3.0}, size_lr=(64, 64),
                  metrics={"psnr_y": 30.123456, "ssim_y": 0.9}, outputs={"sr": "out/a_x2.png"})


def test_one_record_gives_the_json_entry_the_csv_row_and_the_summary_row():
    record = Record.of(_result())
    entry = record.to_json()
    assert list(entry) == ["input", "status", "error", "outputs", "size_lr", "regions", "fallback_reason",
                           "timings_s", "metrics", "metrics_error"]
    assert entry["size_lr"] == [64, 64] and entry["timings_s"]["read"] == 0.01 and entry["fallback_reason"] == "one region"
    (region,) = entry["regions"]
    assert region["zssr"]["iterations"] == 40 and region["kernel"]["size"] == [13, 13] and region["estimator"] == "kenet"
    assert _result().report_entry() == entry
    row = record.csv_row()
    assert tuple(row) == CSV_COLUMNS and row["regions"] == 1 and row["time_total_s"] == 6.01 and row["sr"] == "out/a_x2.png"
    summary = record.summary_row()
    assert len(summary) == len(SUMMARY_COLUMNS)
    assert summary[:5] == ("a.png", "ok", "1", "30.12", "0.9000") and summary[6] == "one region"
    assert Record.from_json(json.loads(json.dumps(entry))) == record


def test_ignored_and_resumed_records(tmp_path: Path):
    ignored = Record.ignored(tmp_path / "notes.txt", "not an image file")
    assert ignored.status == "skipped" and ignored.error == "not an image file" and ignored.regions == []
    assert ignored.csv_row()["regions"] == 0 and ignored.summary_row()[2] == ""

    report = Report(EngineConfig(device="cpu").resolved())
    report.add(Record.of(_result()))
    report.add(ignored)
    report.write(tmp_path)
    with open(tmp_path / "report.csv", newline="") as f:
        assert [r["status"] for r in csv.DictReader(f)] == ["ok", "skipped"]
    earlier = earlier_records(tmp_path)
    assert list(earlier) == ["in/a.png"]
    skipped = Record(input="in/a.png", status="skipped", error="output exists (--skip-existing)").resumed(earlier)
    assert skipped.status == "skipped" and skipped.error.endswith("; record of the earlier run")
    assert skipped.regions == earlier["in/a.png"].regions and skipped.outputs == {"sr": "out/a_x2.png"}
    assert ignored.resumed(earlier) is ignored
    assert earlier_records(tmp_path / "nowhere") == {}
