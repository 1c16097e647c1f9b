"""``report.json`` and ``report.csv``: one record per input (schema in the README, "Report")."""

from __future__ import annotations

import csv
import io
import json
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mkgan_engine.config import EngineConfig
from mkgan_engine.imageio import write_bytes_atomic

CSV_COLUMNS = [
    "input", "status", "error", "regions", "fallback_reason", "psnr_y", "ssim_y", "psnr_rgb", "mse",
    "time_total_s", "time_mask_s", "time_kernels_s", "time_zssr_s", "sr",
]


class Report:
    """Collects per-image records and writes them (atomically) as JSON and CSV."""

    def __init__(self, config: EngineConfig):
        self.config = config
        self.entries: list[dict[str, Any]] = []
        self.started = time.time()
        self.interrupted = False

    def add(self, entry: dict[str, Any]) -> None:
        self.entries.append(entry)

    def counts(self) -> dict[str, int]:
        counts = {"ok": 0, "failed": 0, "skipped": 0}
        for e in self.entries:
            counts[e["status"]] = counts.get(e["status"], 0) + 1
        return counts

    def to_json(self) -> dict[str, Any]:
        from mkgan_engine import __version__

        config = asdict(self.config)
        return {
            "mkgan_engine": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "host": platform.node(),
            "interrupted": self.interrupted,
            "wall_time_s": round(time.time() - self.started, 2),
            "counts": self.counts(),
            "config": json.loads(json.dumps(config, default=str)),
            "images": self.entries,
        }

    def csv_rows(self) -> list[dict[str, Any]]:
        rows = []
        for e in self.entries:
            metrics = e.get("metrics") or {}
            timings = e.get("timings_s") or {}
            rows.append({
                "input": e["input"], "status": e["status"], "error": e.get("error") or "",
                "regions": len(e.get("regions") or []), "fallback_reason": e.get("fallback_reason") or "",
                **{k: metrics.get(k, "") for k in ("psnr_y", "ssim_y", "psnr_rgb", "mse")},
                "time_total_s": round(sum(timings.values()), 3) if timings else "",
                "time_mask_s": timings.get("mask", ""), "time_kernels_s": timings.get("kernels", ""),
                "time_zssr_s": timings.get("zssr", ""), "sr": (e.get("outputs") or {}).get("sr", ""),
            })
        return rows

    def write(self, out_dir: Path, formats: tuple[str, ...] = ("json", "csv")) -> list[Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        if "json" in formats:
            path = out_dir / "report.json"
            write_bytes_atomic(path, json.dumps(self.to_json(), indent=2).encode())
            written.append(path)
        if "csv" in formats:
            path = out_dir / "report.csv"
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            writer.writerows(self.csv_rows())
            write_bytes_atomic(path, buffer.getvalue().encode())
            written.append(path)
        return written
