"""``report.json`` and ``report.csv``: one :class:`Record` per input (schema in the README, "Report").

The record is the one schema: its JSON entry, its CSV row and its row in the CLI's summary table
are all derived from it here.
"""

from __future__ import annotations

import csv
import io
import json
import platform
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mkgan_engine.config import EngineConfig
from mkgan_engine.imageio import write_bytes_atomic

if TYPE_CHECKING:  # pragma: no cover
    from mkgan_engine.pipeline import RegionResult, Result

CSV_COLUMNS = (
    "input", "status", "error", "regions", "fallback_reason", "psnr_y", "ssim_y", "psnr_rgb", "mse",
    "time_total_s", "time_mask_s", "time_kernels_s", "time_zssr_s", "sr",
)
SUMMARY_COLUMNS = ("input", "status", "regions", "Y-PSNR", "SSIM", "time (s)", "note")


def region_record(region: RegionResult) -> dict[str, Any]:
    """One region's part of a record: where it came from, its kernel's shape (sigmas in LR px,
    angle in degrees), how the kernel was found, and its ZSSR training."""
    import numpy as np

    from mkgan_engine.train.kernel import kernel_moments

    major, minor, theta = kernel_moments(region.kernel)
    return {
        "label": region.label,
        "name": region.name,
        "source": region.source,
        "area_fraction": round(region.area_fraction, 4),
        "kernel": {"sigma_major_px": round(major, 3), "sigma_minor_px": round(minor, 3),
                   "theta_deg": round(float(np.degrees(theta)), 1), "size": list(region.kernel.shape)},
        "estimator": region.estimator,
        "status": region.status,
        "confidence": region.confidence,
        "restarts": region.restarts,
        "zssr": region.zssr,
        "notes": list(region.notes),
    }


@dataclass(frozen=True)
class Record:
    """One input of the report. status: "ok", "failed" or "skipped"; outputs: {kind: path};
    size_lr: [height, width]; regions: :func:`region_record` each; timings_s: seconds per stage
    (rounded to ms); metrics: PSNR/SSIM/MSE against the ground truth, or None (metrics_error says
    why when one was given)."""

    input: str | None
    status: str
    error: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    size_lr: list[int] | None = None
    regions: list[dict[str, Any]] = field(default_factory=list)
    fallback_reason: str | None = None
    timings_s: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] | None = None
    metrics_error: str | None = None

    @classmethod
    def of(cls, result: Result) -> Record:
        """The record of an engine result."""
        rmap = result.region_map
        return cls(
            input=result.input, status=result.status, error=result.error, outputs=dict(result.outputs),
            size_lr=list(result.size_lr) if result.size_lr is not None else None,
            regions=[region_record(r) for r in result.regions],
            fallback_reason=rmap.fallback_reason if rmap is not None else None,
            timings_s={k: round(v, 3) for k, v in result.timings.items()},
            metrics=result.metrics, metrics_error=result.metrics_error,
        )

    @classmethod
    def ignored(cls, path: Path, reason: str) -> Record:
        """A path that was not taken as an input (not an image, one of our outputs, ...)."""
        return cls(input=str(path), status="skipped", error=reason)

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> Record:
        """A record read back from a report.json (keys it does not know are dropped)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in entry.items() if k in known})

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def csv_row(self) -> dict[str, Any]:
        """The record's row of report.csv (:data:`CSV_COLUMNS`)."""
        metrics, timings = self.metrics or {}, self.timings_s
        return {
            "input": self.input, "status": self.status, "error": self.error or "",
            "regions": len(self.regions), "fallback_reason": self.fallback_reason or "",
            **{k: metrics.get(k, "") for k in ("psnr_y", "ssim_y", "psnr_rgb", "mse")},
            "time_total_s": round(sum(timings.values()), 3) if timings else "",
            "time_mask_s": timings.get("mask", ""), "time_kernels_s": timings.get("kernels", ""),
            "time_zssr_s": timings.get("zssr", ""), "sr": self.outputs.get("sr", ""),
        }

    def summary_row(self) -> tuple[str, ...]:
        """The record's row of the CLI's summary table (:data:`SUMMARY_COLUMNS`)."""
        metrics, timings = self.metrics or {}, self.timings_s
        return (
            Path(self.input or "?").name, self.status, str(len(self.regions)) if self.status == "ok" else "",
            f"{metrics['psnr_y']:.2f}" if "psnr_y" in metrics else "", f"{metrics['ssim_y']:.4f}" if "ssim_y" in metrics else "",
            f"{sum(timings.values()):.1f}" if timings else "", self.error or self.fallback_reason or "",
        )

    def resumed(self, earlier: dict[str, Record]) -> Record:
        """A --skip-existing record carries what the earlier run measured (kernels, metrics,
        outputs), so the report of a resumed run describes the whole batch."""
        before = earlier.get(self.input or "")
        if self.status != "skipped" or before is None:
            return self
        return replace(before, status="skipped", error=f"{self.error}; record of the earlier run")


def earlier_records(out_dir: Path) -> dict[str, Record]:
    """The "ok" records of an earlier report.json in ``out_dir`` by input path ({} if none or unreadable)."""
    try:
        images = json.loads((out_dir / "report.json").read_text())["images"]
        return {e["input"]: Record.from_json(e) for e in images
                if isinstance(e, dict) and e.get("status") == "ok" and "input" in e}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


class Report:
    """Collects per-image records and writes them (atomically) as JSON and CSV."""

    def __init__(self, config: EngineConfig):
        self.config = config
        self.entries: list[Record] = []
        self.started = time.time()
        self.interrupted = False

    def add(self, record: Record) -> None:
        self.entries.append(record)

    def counts(self) -> dict[str, int]:
        counts = {"ok": 0, "failed": 0, "skipped": 0}
        for record in self.entries:
            counts[record.status] = counts.get(record.status, 0) + 1
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
            "images": [record.to_json() for record in self.entries],
        }

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
            writer.writerows(record.csv_row() for record in self.entries)
            write_bytes_atomic(path, buffer.getvalue().encode())
            written.append(path)
        return written
