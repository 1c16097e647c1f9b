"""The ``mkgan-engine`` command line: ``sr`` (super-resolve files/directories), ``export`` (YOLO/SAM
to ONNX/TensorRT/AOTInductor), ``doctor`` (what can run here). Heavy imports happen inside commands,
so ``--help`` is instant."""

from __future__ import annotations

import logging
import re
import signal
import sys
from pathlib import Path
from typing import Optional

import typer

from mkgan_engine import __version__
from mkgan_engine.config import BACKEND_NAMES, BLUR_MAP_NAMES, MASKER_NAMES, SAM_TYPES
from mkgan_engine.cli_flags import with_flags
from mkgan_engine.exitcodes import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_TERMINATED, EXIT_USAGE
from mkgan_engine.train.config import ENSEMBLE_SIZES, KERNEL_ESTIMATORS, KERNEL_MODELS

# `sr --pack`: up to 4 images per member batch, at most 1 LR megapixel in all (1.11-1.17x images/hour on
# 2 CPU cores with the same pixels, RESULTS.md "packing-cpu"; larger photos go alone, memory stays
# that of one large photo).
PACK_DEFAULT = 4
PACK_PIXELS = 1_000_000

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Blind super-resolution for photos whose blur varies: one kernel per image region (KENet or KernelGAN), ZSSR per region, seamless merge.",
)


def _raise_terminated(signum, frame) -> None:
    from mkgan_engine.batch import Terminated

    raise Terminated()


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mkgan-engine {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Blind super-resolution for photos whose blur varies."""


def _choice(value: str, allowed: tuple[str, ...], option: str) -> str:
    if value not in allowed:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(allowed)}", param_hint=option)
    return value


def _csv_set(value: str, allowed: tuple[str, ...], option: str) -> tuple[str, ...]:
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    for item in items:
        _choice(item, allowed, option)
    return items


def _setup_logging(quiet: bool, verbose: bool) -> None:
    from rich.logging import RichHandler

    from rich.console import Console

    level = logging.ERROR if quiet else logging.DEBUG if verbose else logging.WARNING
    handler = RichHandler(console=Console(stderr=True), show_path=False, show_time=False)  # logs to stderr
    logging.basicConfig(level=level, format="%(message)s", handlers=[handler], force=True)
    if not verbose:
        logging.getLogger("mkgan_engine").setLevel(logging.ERROR if quiet else logging.INFO)


def _usage_error(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(EXIT_USAGE)


@app.command()
def sr(
    inputs: list[str] = typer.Argument(..., help="Image files, directories or globs."),
    output: Path = typer.Option(..., "-o", "--output", help="Output directory."),
    scale: int = typer.Option(2, "--scale", "-s", help="Upscaling factor: 2 or 4."),
    masker: str = typer.Option("auto", help=f"Region masker: {'|'.join(MASKER_NAMES)} (auto: yolo-sam with both weights, else blur = regions where the blur differs)."),
    max_regions: int = typer.Option(3, min=1, max=8, help="The blur masker makes at most this many regions (it picks 1..N per image)."),
    blur_map: str = typer.Option("kenet", help=f"The blur masker's local blur: {'|'.join(BLUR_MAP_NAMES)} (learned estimator, or weight-free edge re-blur)."),
    mask_dir: Optional[Path] = typer.Option(None, help="User masks <stem>.png (>0 = object, or a label map); bypass the masker."),
    preset: str = typer.Option("fast", help="Training preset: fast (CPU-friendly) or paper (reference settings)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    seed: int = typer.Option(0, help="Base random seed (each region derives its own)."),
    kernel_estimator: str = typer.Option("kenet", help="Kernel per region: kenet (learned, shipped; default), kernelgan (internal GAN) or hybrid (KernelGAN gaussian model started from KENet)."),
    kernel_model: str = typer.Option("deep-linear", help="KernelGAN generator: deep-linear (reference) or gaussian (3-parameter kernel prior)."),
    kernelgan_iters: Optional[int] = typer.Option(None, min=1, help="Override the preset's KernelGAN iterations."),
    zssr_iters: Optional[int] = typer.Option(None, min=1, help="Override the preset's ZSSR iterations."),
    ensemble: Optional[int] = typer.Option(None, help="Override the preset's ZSSR self-ensemble: 1, 2, 4 or 8 flips/rotations (8 = slowest, best)."),
    tile: Optional[int] = typer.Option(None, min=32, help="ZSSR inference tile side in LR pixels (default: the largest that fits --max-memory)."),
    max_memory: int = typer.Option(1024, min=64, help="Working memory (MB) of one ZSSR inference tile; the image-sized arrays come on top (README, 'Large photos')."),
    pack: Optional[int] = typer.Option(None, min=1, max=64, help=f"Train the regions of up to N images (at most {PACK_PIXELS / 1e6:g} LR megapixel in all) as one member batch: the same outputs, faster (default {PACK_DEFAULT}; 1 = one image at a time)."),
    suffix: str = typer.Option("_x{scale}", help="Output name suffix; {scale} is replaced."),
    ext: str = typer.Option("png", help="Output format: png, jpg, webp, tif or same (as the input; GIF -> png)."),
    jpeg_quality: int = typer.Option(95, min=1, max=100, help="Quality of jpg/webp SR images."),
    skip_existing: bool = typer.Option(False, "--skip-existing", help="Skip inputs whose SR output exists (resume)."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Descend into sub-directories."),
    gt_dir: Optional[Path] = typer.Option(None, help="Ground-truth HR images (same stem): score PSNR/SSIM/MSE."),
    yolo_weights: Optional[Path] = typer.Option(None, help="YOLOv8 detector weights (.pt) for yolo-sam."),
    sam_checkpoint: Optional[Path] = typer.Option(None, help="SAM checkpoint (.pth) for yolo-sam / sam."),
    sam_type: str = typer.Option("vit_b", help=f"SAM model type: {', '.join(SAM_TYPES)}."),
    backend: str = typer.Option("torch", help=f"Runtime for YOLO/SAM: {'|'.join(BACKEND_NAMES)}."),
    engines: Optional[Path] = typer.Option(None, help="Directory written by `mkgan-engine export` (non-torch backends)."),
    save: str = typer.Option("kernels,masks", help="Extra outputs: any of kernels,masks,previews (or 'none')."),
    report: str = typer.Option("json,csv", help="Report formats: json,csv (or 'none')."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would be processed or skipped, and why, with a rough time per image; write nothing."),
    ray: Optional[str] = typer.Option(None, "--ray", metavar="auto|ADDRESS", help="Run on a Ray cluster (pip install 'mkgan-engine[ray]'): auto (RAY_ADDRESS, the cluster started on this machine, else a new local one) or HOST:PORT / ray://HOST:10001. Every node must see the same paths (docs/ray.md)."),
    ray_workers: Optional[int] = typer.Option(None, min=1, help="--ray: worker processes, one engine each (default: as many as the cluster holds)."),
    gpus_per_worker: float = typer.Option(0.0, min=0.0, help="--ray: GPUs each worker reserves; fractions share a GPU (0.5 = two workers per GPU)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only errors (every failed image, on stderr) and the exit code."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    """Super-resolve images: mask regions, estimate one kernel per region, ZSSR per region, merge.

    Exit code 0 when every image succeeded (or was skipped), 1 when any failed, 2 for usage errors,
    130 when interrupted by Ctrl-C, 143 by SIGTERM (the report of what finished is still written).
    """
    _setup_logging(quiet, verbose)
    if scale not in (2, 4):
        raise typer.BadParameter("must be 2 or 4", param_hint="--scale")
    _choice(masker, MASKER_NAMES, "--masker")
    _choice(preset, ("fast", "paper"), "--preset")
    _choice(kernel_estimator, KERNEL_ESTIMATORS, "--kernel-estimator")
    _choice(kernel_model, KERNEL_MODELS, "--kernel-model")
    _choice(ext, ("png", "jpg", "webp", "tif", "same"), "--ext")
    _choice(sam_type, SAM_TYPES, "--sam-type")
    _choice(blur_map, BLUR_MAP_NAMES, "--blur-map")
    _choice(backend, BACKEND_NAMES, "--backend")
    if ensemble is not None:
        _choice(str(ensemble), tuple(map(str, ENSEMBLE_SIZES)), "--ensemble")
    if ray is not None and ray != "auto" and not re.fullmatch(r"(ray://)?[^\s/]+:\d+", ray):
        raise typer.BadParameter(f"{ray!r} is neither auto nor an address HOST:PORT (ray://HOST:PORT)", param_hint="--ray")
    if ray is not None and pack is not None and pack > 1:
        raise typer.BadParameter("packs images on one machine; with --ray every worker runs its own images", param_hint="--pack")
    if ray is None and (ray_workers is not None or gpus_per_worker):
        raise typer.BadParameter("needs --ray", param_hint="--ray-workers" if ray_workers is not None else "--gpus-per-worker")
    saves = () if save == "none" else _csv_set(save, ("kernels", "masks", "previews"), "--save")
    reports = () if report == "none" else _csv_set(report, ("json", "csv"), "--report")

    from mkgan_engine.batch import Terminated, collect_inputs, output_conflicts, run_batch
    from mkgan_engine.config import EngineConfig, MaskerConfig, OutputConfig
    from mkgan_engine.device import DeviceError
    from mkgan_engine.pipeline import Engine
    from mkgan_engine.report import Record, Report, earlier_records
    from mkgan_engine.train.config import KernelGANConfig, ZSSRConfig

    if masker == "auto" and engines is None and (yolo_weights is None) != (sam_checkpoint is None):
        given, missing = ("--yolo-weights", "--sam-checkpoint") if sam_checkpoint is None else ("--sam-checkpoint", "--yolo-weights")
        raise _usage_error(f"{given} alone: --masker auto uses yolo-sam only with both weights; add {missing} "
                           "or choose a masker with --masker")
    for option, path in (("--mask-dir", mask_dir), ("--gt-dir", gt_dir), ("--engines", engines)):
        if path is not None and not path.is_dir():
            raise _usage_error(f"{option} {path}: not a directory")
    try:
        sr_suffix = suffix.format(scale=scale)
    except (KeyError, IndexError, ValueError) as error:
        raise _usage_error(f"--suffix {suffix!r}: only {{scale}} may be used ({type(error).__name__}: {error})")
    try:
        items, ignored = collect_inputs(inputs, recursive, sr_suffix=sr_suffix)
    except FileNotFoundError as error:
        raise _usage_error(str(error))
    if not dry_run:  # --dry-run writes nothing, not even the output folder
        try:
            output.mkdir(parents=True, exist_ok=True)
            probe = output / ".mkgan-write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as error:
            raise _usage_error(f"cannot write to output directory {output}: {error.strerror or error}")

    kernelgan = KernelGANConfig.preset(preset).with_(kernel_model=kernel_model)  # type: ignore[arg-type]
    if kernelgan_iters is not None:
        kernelgan = kernelgan.with_(iterations=kernelgan_iters)
    zssr = ZSSRConfig.preset(preset)  # type: ignore[arg-type]
    if zssr_iters is not None:
        zssr = zssr.with_(iterations=zssr_iters, min_iterations=min(zssr_iters, zssr.min_iterations))
    if ensemble is not None:
        zssr = zssr.with_(ensemble=ensemble)
    zssr = zssr.with_(tile=tile, max_memory_mb=max_memory)
    config = EngineConfig(
        scale=scale, preset=preset, device=device, seed=seed, kernel_estimator=kernel_estimator,  # type: ignore[arg-type]
        kernelgan=kernelgan, zssr=zssr,
        masker=MaskerConfig(name=masker, backend=backend, yolo_weights=yolo_weights,  # type: ignore[arg-type]
                            sam_checkpoint=sam_checkpoint, sam_type=sam_type, engines_dir=engines, mask_dir=mask_dir,  # type: ignore[arg-type]
                            max_regions=max_regions, blur_map=blur_map),  # type: ignore[arg-type]
        output=OutputConfig(suffix=suffix, ext=ext, jpeg_quality=jpeg_quality, save_kernels="kernels" in saves, save_masks="masks" in saves,  # type: ignore[arg-type]
                            save_previews="previews" in saves, reports=reports, skip_existing=skip_existing),
    )
    conflicts = output_conflicts(items, output, config)
    if conflicts:
        raise _usage_error("refusing to run, outputs would destroy data:\n  " + "\n  ".join(conflicts)
                           + "\n(choose another -o, --suffix or --ext, or rename the inputs)")
    if dry_run:
        _print_dry_run(items, ignored, output, config)
        raise typer.Exit(EXIT_OK)
    progress = None
    try:
        config = config.resolved()  # the preset's settings, the device that runs
        progress = None if quiet else _Progress(items, config)
        engine = Engine(config, on_stage=progress.stage if progress else None, on_progress=progress.step if progress else None)
        if config.masker.resolved_name() != "none" and items:
            engine.masker  # load weights / engines now: a missing file is a usage error, not N failures
        if config.kernel_estimator != "kernelgan" and items:
            engine.kenet_model  # the shipped KENet weights, sha256-checked
    except DeviceError as error:
        raise _usage_error(f"--device {error}; --device cpu runs without CUDA")
    except (ValueError, FileNotFoundError, ImportError, RuntimeError) as error:
        raise _usage_error(with_flags(str(error)))

    records = None
    if ray is not None:  # the Ray workers run the images; each resolves --device (a CPU head node can drive GPU workers)
        from dataclasses import replace

        config = replace(config, device=device)
        records = _ray_records(config, items, output, gt_dir, ray, ray_workers, gpus_per_worker)
        if progress:
            progress.stage(f"on Ray ({ray})")
    log = logging.getLogger("mkgan_engine")
    log.info("%d image(s), masker %s, scale x%d, preset %s, device %s", len(items), config.masker.resolved_name(), scale, preset, engine.device)
    run_report = Report(config)
    for path, reason in ignored:
        run_report.add(Record.ignored(path, reason))
    earlier = earlier_records(output) if skip_existing else {}
    previous_sigterm = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        with progress or _NullContext():
            if records is None:  # the local runner
                records = (Record.of(result) for result in run_batch(engine, items, out_dir=output, gt_dir=gt_dir,
                                                                      pack=pack or PACK_DEFAULT, pack_pixels=PACK_PIXELS))
            for record in records:
                run_report.add(record.resumed(earlier))
                if progress:
                    progress.done(record)
                elif record.status == "failed":  # --quiet: errors only, but every failed image
                    typer.echo(f"failed  {Path(record.input or '?').name} ({record.error})", err=True)
    except (KeyboardInterrupt, Terminated) as stop:
        run_report.interrupted = True
        _write_report(run_report, output, reports)
        typer.secho(f"interrupted: report of the {len(run_report.entries)} finished input(s) written to {output}", err=True, fg=typer.colors.YELLOW)
        raise typer.Exit(EXIT_TERMINATED if isinstance(stop, Terminated) else EXIT_INTERRUPTED)
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)
    written = _write_report(run_report, output, reports)
    if not quiet:
        _print_summary(run_report, written)
    report_failed = bool(reports) and not written
    raise typer.Exit(EXIT_FAILED if run_report.counts().get("failed") or report_failed else EXIT_OK)


def _ray_records(config, items, output: Path, gt_dir: Optional[Path], address: str, workers: Optional[int], gpus_per_worker: float):
    """``--ray``: connect to Ray and return the stream of report records of
    :func:`mkgan_engine.distributed.run_ray`; no Ray, an unreachable cluster or one too small is a usage error."""
    try:
        from mkgan_engine.distributed import run_ray

        return run_ray(config, items, output, gt_dir=gt_dir, address=address, workers=workers, gpus_per_worker=gpus_per_worker)
    except ImportError as error:
        raise _usage_error(f"--ray needs Ray ({error}): pip install 'mkgan-engine[ray]'")
    except (ConnectionError, ValueError, RuntimeError) as error:  # RuntimeError: e.g. Ray's authentication
        raise _usage_error(f"--ray {address}: {with_flags(str(error))}")


def _bare_ray(args: list[str]) -> list[str]:
    """``--ray`` without a value (last, or before another option) means ``--ray auto``."""
    bare = [i + 1 for i, arg in enumerate(args) if arg == "--ray" and (i + 1 == len(args) or args[i + 1].startswith("-"))]
    for position in reversed(bare):
        args = [*args[:position], "auto", *args[position:]]
    return args


def _write_report(run_report, output: Path, reports: tuple[str, ...]) -> list[Path]:
    """Write the report; a failure (full disk, ...) is said on stderr, not a traceback. The SR files
    already written stay; the atomic writes leave no temporary file."""
    try:
        return run_report.write(output, reports)
    except OSError as error:
        typer.secho(f"error: could not write the report to {output}: {error.strerror or error}", err=True, fg=typer.colors.RED)
        return []


def _print_dry_run(items, ignored, output: Path, config) -> None:
    """What a run would do with each input, and a rough time (this machine's CPU, measured on the
    README demo: see :func:`mkgan_engine.batch.estimate_seconds`)."""
    from rich.console import Console
    from rich.table import Table

    from mkgan_engine.batch import estimate_seconds, image_size
    from mkgan_engine.outputs import output_paths

    table = Table(title="mkgan-engine sr --dry-run")
    for column in ("input", "would", "size (px)", "est. time (s)", "why"):
        table.add_column(column, overflow="fold")
    total = 0.0
    for item in items:
        size = image_size(item.path)
        if config.output.skip_existing and output_paths(item.path, output, config, item.relative_dir).sr.exists():
            table.add_row(str(item.path), "skip", "", "", "output exists (--skip-existing)")
        elif size is None:
            table.add_row(str(item.path), "fail", "", "", "not a readable image")
        else:
            seconds = estimate_seconds(size, config)
            total += seconds
            table.add_row(str(item.path), "process", f"{size[1]}x{size[0]}", f"{seconds:.0f}", "")
    for path, reason in ignored:
        table.add_row(str(path), "skip", "", "", reason)
    console = Console()
    console.print(table)
    console.print(f"{len(items)} input(s), {len(ignored)} ignored; about {total / 60:.1f} min in all on CPU "
                  f"({config.preset} preset, {config.kernel_estimator}); nothing was written")


class _NullContext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _Progress:
    """Two rich progress bars: the batch (its ETA weighs each image by its estimated time, so a big
    photo counts for more than a thumbnail) and the current image (stage, ZSSR iteration, tile)."""

    def __init__(self, items, config):
        from rich.console import Console
        from rich.progress import (
            BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn,
        )

        from mkgan_engine.batch import estimate_seconds, image_size

        self.weights = [estimate_seconds(image_size(item.path) or (256, 256), config) for item in items]
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description:<22}"), BarColumn(), TextColumn("{task.fields[count]}"),
                                 TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), transient=False,
                                 console=Console(stderr=True))
        self.batch = self.progress.add_task("images", total=sum(self.weights) or 1, count=f"0/{len(items)}")
        self.image = self.progress.add_task("", total=None, count="")
        self.finished = 0

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def stage(self, name: str) -> None:
        self.progress.reset(self.image, total=None, description=name, count="", visible=True)

    def step(self, name: str, done: int, total: int) -> None:
        """Progress inside the current image: "zssr train" iterations, "zssr tiles"."""
        self.progress.update(self.image, description=name, total=total, completed=done, count=f"{done}/{total}")

    def done(self, result) -> None:
        if self.finished < len(self.weights):
            self.progress.advance(self.batch, self.weights[self.finished])
        self.finished += 1
        self.progress.update(self.batch, count=f"{self.finished}/{len(self.weights)}")
        self.progress.update(self.image, visible=False)  # until the next image's first stage
        name = Path(result.input or "?").name
        colour = {"ok": "green", "failed": "red", "skipped": "yellow"}[result.status]
        extra = f" ({result.error})" if result.error else ""
        self.progress.console.print(f"[{colour}]{result.status:<7}[/{colour}] {name}{extra}", highlight=False)


def _print_summary(run_report, written: list[Path]) -> None:
    from rich.console import Console
    from rich.table import Table

    from mkgan_engine.report import SUMMARY_COLUMNS

    table = Table(title="mkgan-engine sr", show_lines=False)
    for column in SUMMARY_COLUMNS:
        table.add_column(column, overflow="fold")
    for record in run_report.entries:
        table.add_row(*record.summary_row())
    console = Console()
    console.print(table)
    counts = run_report.counts()
    console.print(f"{counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} skipped; report: {', '.join(map(str, written)) or 'none'}")


@app.command()
def doctor(
    device: str = typer.Option("auto", help="Device the run would use."),
    backend: str = typer.Option("torch", help=f"Masking backend the run would use: {'|'.join(BACKEND_NAMES)}."),
    yolo_weights: Optional[Path] = typer.Option(None, help="Check these YOLOv8 weights exist and load."),
    sam_checkpoint: Optional[Path] = typer.Option(None, help="Check this SAM checkpoint exists."),
    engines: Optional[Path] = typer.Option(None, help="List and check exported artefacts in this directory."),
) -> None:
    """Print what can run here (torch/CUDA, ONNX Runtime providers, TensorRT, C++ extension, weights,
    exported engines); exit 1 when the requested setup cannot run."""
    from mkgan_engine.doctor import diagnose, print_diagnosis

    checks = diagnose(device=device, backend=backend, yolo_weights=yolo_weights, sam_checkpoint=sam_checkpoint, engines=engines)
    ok = print_diagnosis(checks)
    raise typer.Exit(EXIT_OK if ok else EXIT_FAILED)


def _register_export() -> None:
    """Mount ``mkgan-engine export`` from mkgan_engine.export.cli when it is present."""
    try:
        from mkgan_engine.export.cli import register
    except ImportError:  # pragma: no cover - export module not built
        return
    register(app)


_register_export()


def main() -> None:
    """Console entry point."""
    try:
        app(args=_bare_ray(sys.argv[1:]))
    except KeyboardInterrupt:  # interrupted outside a batch
        sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    main()
