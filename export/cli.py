"""``mkgan-engine export``: YOLOv8 / SAM -> ONNX, TensorRT engines, AOTInductor packages.

Mounted on the main typer app by ``mkgan_engine.cli`` through :func:`register`; also usable alone
(``python -m mkgan_engine.export.cli --help``). :func:`run_export` is the plain-function form (takes an
:class:`~mkgan_engine.export.exporter.ExportOptions`, returns an exit code, prints errors as
``error: ...`` on stderr): 0 ok, 1 export failed, 2 bad usage.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional

import typer

from mkgan_engine.backends.manifest import FORMATS, ManifestError, describe_engines
from mkgan_engine.cli_flags import with_flags
from mkgan_engine.config import SAM_TYPES
from mkgan_engine.exitcodes import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from mkgan_engine.export.exporter import ExportError, ExportOptions, export_models

__all__ = ["app", "export_command", "register", "run_export"]


log = logging.getLogger(__name__)

_DEFAULTS = ExportOptions()  # the CLI's defaults are the options' defaults


def _error(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)


def run_export(options: ExportOptions) -> int:
    """Run the export and print a summary table; returns the exit code (never raises for user errors)."""
    try:
        manifest = export_models(options)
    except (ValueError, FileNotFoundError) as e:  # bad options / files (nothing written)
        _error(with_flags(str(e)))
        return EXIT_USAGE
    except (ImportError, ExportError, ManifestError, RuntimeError, OSError) as e:  # missing tool / failed step
        _error(with_flags(str(e)))
        return EXIT_FAILED
    _print_rows(describe_engines(options.out_dir), f"exported to {options.out_dir}")
    failed = [a for a in manifest.artefacts if a.parity is not None and not a.parity.passed]
    if failed:
        _error("parity check failed for " + ", ".join(f"{a.model}/{a.format}" for a in failed)
               + " (the files were written; see the table)")
        return EXIT_FAILED
    return EXIT_OK


def _print_rows(rows: list[dict], title: str) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=title)
    for col in ("model", "format", "file", "precision", "size MB", "parity", "status"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["model"], r["format"], escape(r["file"]), r["precision"], f"{r['size_mb']:.1f}", escape(r["parity"]),
                      "[red]" + escape(r["problem"]) + "[/]" if r.get("problem") else "[green]ok[/]")
    console = Console()
    if not console.is_terminal:  # piped/logged: do not squeeze the table into 80 columns
        console.width = max(console.width, 132)
    console.print(table)


def export_command(
    yolo_weights: Optional[Path] = typer.Option(None, "--yolo-weights", "--yolo", help="YOLOv8 detection weights (.pt, ultralytics)."),
    sam_checkpoint: Optional[Path] = typer.Option(None, "--sam-checkpoint", "--sam", help="SAM checkpoint (.pth state_dict)."),
    sam_type: str = typer.Option(_DEFAULTS.sam_type, "--sam-type", help=f"SAM variant of the checkpoint: {'|'.join(SAM_TYPES)}."),
    fmt: str = typer.Option("onnx", "--format", "-f", help=f"{'|'.join(FORMATS)}|all (comma-separated for several)."),
    half: bool = typer.Option(_DEFAULTS.half, "--half", help="fp16 TensorRT engines / CUDA AOTI packages (LayerNorm stays fp32)."),
    imgsz: int = typer.Option(_DEFAULTS.imgsz, "--imgsz", help="Detector input size (multiple of 32)."),
    workspace: float = typer.Option(_DEFAULTS.workspace_gb, "--workspace", help="TensorRT builder workspace in GB."),
    dynamic_batch: bool = typer.Option(_DEFAULTS.dynamic_batch, "--dynamic-batch", help="Dynamic batch dimension for the detector/encoder."),
    device: str = typer.Option(_DEFAULTS.device, "--device", help="cpu or cuda[:N]: where AOTI packages run (engines always build on CUDA)."),
    max_boxes: int = typer.Option(_DEFAULTS.max_boxes, "--max-boxes", min=1, help="Largest box count of the decoder engine profile."),
    output: Path = typer.Option(..., "-o", "--output", help="Engines directory (manifest.json + model files)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log every step."),
) -> None:
    """Export YOLOv8 and SAM to ONNX / TensorRT / AOTInductor with a manifest (parity checked against torch)."""
    # Only our own steps at INFO: the ONNX exporter's optimiser logs hundreds of INFO lines.
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("mkgan_engine").setLevel(logging.INFO if verbose else logging.WARNING)
    options = ExportOptions(yolo_weights=yolo_weights, sam_checkpoint=sam_checkpoint, sam_type=sam_type, formats=fmt,
                            out_dir=output, half=half, imgsz=imgsz, workspace_gb=workspace, dynamic_batch=dynamic_batch,
                            device=device, max_boxes=max_boxes)
    raise typer.Exit(run_export(options))


def register(app: typer.Typer) -> None:
    """Mount ``export`` on the main CLI."""
    app.command("export")(export_command)


app = typer.Typer(add_completion=False, rich_markup_mode=None, help=__doc__.splitlines()[0])
app.command("export")(export_command)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
