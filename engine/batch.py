"""Streaming over many images: a bounded pipeline that reads and masks the next images while the
current ones train, writes each image's outputs (in a writer thread) before reporting it, and never
lets one bad image stop the batch.

With ``pack`` > 1 the regions of up to ``pack`` images train together as one member batch
(:meth:`Engine.finish_many`: KernelGAN and ZSSR members of several images in one batch, what fills a
GPU); each image's result is the one it gets alone, so packing changes the speed, never the output.

Memory stays flat: at most ``max(prefetch, pack)`` decoded images wait, at most one pack trains,
writes are queued one at a time, and pixel arrays are dropped once written.
"""

from __future__ import annotations

import glob
import logging
import queue
import re
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from mkgan_engine.imageio import READ_SUFFIXES, ImageReadError
from mkgan_engine.pipeline import Engine, InputError, Prepared, Result

log = logging.getLogger(__name__)


class Terminated(BaseException):
    """SIGTERM (a scheduler, ``docker stop``, ``timeout``), raised by the CLI's signal handler and
    handled like Ctrl-C. A BaseException, like KeyboardInterrupt, so the per-image error handling
    (one bad image never stops the batch) lets it through."""


@dataclass(frozen=True)
class InputFile:
    """An input and the sub-folder (relative to its root argument) its outputs mirror."""

    path: Path
    relative_dir: Path = Path()


_OWN_OUTPUT = re.compile(r".+(_mask|_preview)\.png|.+_kernel_\d+(_x4)?\.mat|.+_kernels\.npz|report\.(json|csv)")


def is_own_output(path: Path, sr_suffix: str | None) -> bool:
    """Whether a file's name is one this tool writes (``<stem><sr_suffix>.*``, ``<stem>_mask.png``,
    ``<stem>_preview.png``, kernels, reports): such files are never taken as inputs from a folder."""
    return bool(_OWN_OUTPUT.fullmatch(path.name)) or (bool(sr_suffix) and path.stem.endswith(sr_suffix))


def collect_inputs(
    arguments: Sequence[str | Path], recursive: bool = False, sr_suffix: str | None = None
) -> tuple[list[InputFile], list[tuple[Path, str]]]:
    """Expand files, directories and globs into image inputs.

    Returns (images, ignored as (path, reason)): files in a directory (or matched by a glob) whose
    suffix is not an image's, or whose name is one of this tool's outputs (see :func:`is_own_output`;
    ``sr_suffix`` is the SR file's suffix, e.g. "_x2"), are ignored - listed, not failed; a file
    named explicitly is always an input (so a bad one fails loudly). Raises FileNotFoundError for
    an argument that matches nothing.
    """
    images: list[InputFile] = []
    ignored: list[tuple[Path, str]] = []

    def add(f: Path, relative_dir: Path = Path()) -> None:
        if is_own_output(f, sr_suffix):
            ignored.append((f, "an output of mkgan-engine"))
        elif f.suffix.lower() not in READ_SUFFIXES:
            ignored.append((f, "not an image file"))
        else:
            images.append(InputFile(f, relative_dir))

    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            for f in sorted(path.glob(pattern)):
                if f.name.startswith("."):
                    continue
                if f.is_file():
                    add(f, f.parent.relative_to(path))
                elif f.is_symlink() and not f.exists():
                    ignored.append((f, "broken symbolic link"))
                elif f.is_dir() and not recursive:
                    ignored.append((f, "a folder (use --recursive to include it)"))
        elif path.is_file():
            images.append(InputFile(path))
        else:
            matches = sorted(Path(m) for m in glob.glob(str(argument), recursive=recursive))
            files = [m for m in matches if m.is_file()]
            if not files:
                raise FileNotFoundError(f"no such file, directory or glob match: {argument}")
            for f in files:
                add(f)
    return images, ignored


def output_conflicts(items: Sequence[InputFile], out_dir: Path, config) -> list[str]:
    """Why this batch would destroy data, one message per problem: an SR output path that is an
    input's own path, or two inputs whose outputs are the same files."""
    from mkgan_engine.outputs import output_paths

    problems, owner = [], {}
    inputs = {item.path.resolve(): item.path for item in items}
    for item in items:
        sr = output_paths(item.path, out_dir, config, item.relative_dir).sr
        key = sr.resolve()
        if key in inputs:
            problems.append(f"the output {sr} would overwrite the input {inputs[key]}")
        stem_key = key.with_name(item.path.stem)  # kernels, masks and previews share the stem
        if stem_key in owner and owner[stem_key] != item.path:
            problems.append(f"{owner[stem_key]} and {item.path} would write the same outputs ({sr.name}, ...)")
        owner.setdefault(stem_key, item.path)
    return problems


# Rough CPU cost (2 cores), fitted to benchmarks/large_photo.py (RESULTS.md "large-photo": 256 px to
# 2000x1400 LR, fast preset): start-up, masking and KENet; ZSSR training per region and step (x4 has
# two); ZSSR inference per LR megapixel at x2 and per self-ensemble transform (the tiles of all
# regions together cover about the image once, plus halos). A guide for --dry-run and the ETA only.
_SECONDS_FIXED = 4.0
_SECONDS_TRAIN_PER_REGION = 8.0
_SECONDS_INFER_PER_MEGAPIXEL = 55.0
_KERNELGAN_SECONDS = 25.0  # per region at the fast preset (600 iterations)
_PAPER_FACTOR = 9.0  # paper preset: ~3000 instead of 320 ZSSR iterations (and KernelGAN 3000 instead of 600)


def image_size(path: Path) -> tuple[int, int] | None:
    """(height, width) from the file's header (Pillow, no decode), or None when unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.height, im.width
    except Exception:  # noqa: BLE001 - any failure means "not readable"
        return None


def estimate_seconds(size: tuple[int, int], config) -> float:
    """Rough seconds to process an LR image of ``size`` (H, W) on this project's 2-core CPU with a
    resolved ``config`` (one region with the "none" masker, else two assumed)."""
    regions = 1 if config.masker.resolved_name() == "none" and config.masker.mask_dir is None else 2
    steps = 2 if config.scale == 4 else 1
    paper = _PAPER_FACTOR if config.preset == "paper" else 1.0
    train = regions * steps * _SECONDS_TRAIN_PER_REGION * paper
    if config.kernel_estimator != "kenet":
        train += regions * _KERNELGAN_SECONDS * (config.kernelgan.iterations / 600)
    infer = _SECONDS_INFER_PER_MEGAPIXEL * size[0] * size[1] / 1e6 * (config.scale**2 / 4) * config.zssr.ensemble
    return _SECONDS_FIXED + train + infer


def _find_ground_truth(gt_dir: Path | None, stem: str) -> Path | None:
    if gt_dir is None:
        return None
    for candidate in sorted(gt_dir.glob(f"{glob.escape(stem)}.*")):
        if candidate.suffix.lower() in READ_SUFFIXES:
            return candidate
    return None


def _failure(item: InputFile, message: str, status: str = "failed") -> Result:
    return Result(input=str(item.path), status=status, error=message)  # type: ignore[arg-type]


_DONE = object()


def run_batch(
    engine: Engine,
    inputs: Sequence[InputFile | Path],
    out_dir: Path | None = None,
    gt_dir: Path | None = None,
    prefetch: int = 2,
    pack: int = 1,
    pack_pixels: int | None = None,
) -> Iterator[Result]:
    """Yield one Result per input, in order, as each finishes (written to ``out_dir`` when given).

    Stage 1 (thread): :meth:`Engine.prepare` (decode, size check, mask) the next
    ``max(prefetch, pack)`` images. Stage 2 (caller's thread): :meth:`Engine.finish` (kernel
    estimation, ZSSR, merge) of one image, or with ``pack`` > 1 :meth:`Engine.finish_many` of the
    next ``pack`` prepared images, as many as fit ``pack_pixels`` LR pixels in all (an image larger
    than that is a pack of its own; None: no limit). When a pack fails, its images are finished one
    by one, so the error lands on the image that caused it. Stage 3 (thread): write outputs; an image is yielded
    once its files are written. A failure in any stage becomes a Result with status "failed" and
    the error; --skip-existing inputs become "skipped".
    """
    if pack < 1:
        raise ValueError(f"pack must be >= 1, got {pack}")
    from mkgan_engine.outputs import output_paths, write_result

    items = [i if isinstance(i, InputFile) else InputFile(Path(i)) for i in inputs]
    config = engine.config
    ready: queue.Queue = queue.Queue(maxsize=max(1, prefetch, pack))
    stop = threading.Event()

    def prepare(item: InputFile) -> Prepared | Result:
        if out_dir is not None and config.output.skip_existing:
            if output_paths(item.path, out_dir, config, item.relative_dir).sr.exists():
                return _failure(item, "output exists (--skip-existing)", "skipped")
        try:
            prepared = engine.prepare(item.path, announce=False)  # the progress display shows the image training
        except (ImageReadError, InputError, ValueError, FileNotFoundError) as error:
            return _failure(item, str(error))
        except Exception as error:  # noqa: BLE001 - one bad image never stops the batch
            log.debug("masking failed for %s", item.path, exc_info=True)
            return _failure(item, f"masking failed: {type(error).__name__}: {error}")
        if prepared.image.alpha is not None and out_dir is not None:
            sr_path = output_paths(item.path, out_dir, config, item.relative_dir).sr
            if sr_path.suffix in (".jpg", ".jpeg"):
                return _failure(item, f"the input has an alpha channel, which {sr_path.name} (JPEG) cannot hold: "
                                      "use --ext png or --ext same")
        return prepared

    def producer() -> None:
        for item in items:
            if stop.is_set():
                break
            prepared = prepare(item)
            while not stop.is_set():
                try:
                    ready.put((item, prepared), timeout=0.1)
                    break
                except queue.Full:
                    continue
        ready.put((None, _DONE))

    thread = threading.Thread(target=producer, name="mkgan-prefetch", daemon=True)
    thread.start()
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mkgan-writer")
    try:
        carry: list[tuple[InputFile, Prepared | Result]] = []  # taken from the queue, not packed yet
        done = False
        while carry or not done:
            entries: list[tuple[InputFile, Prepared | Result]] = []  # in input order: up to `pack` to train
            count = pixels = 0
            while count < pack:
                if carry:
                    item, prepared = carry.pop(0)
                elif done:
                    break
                else:
                    item, prepared = ready.get()
                    if prepared is _DONE:
                        done = True
                        break
                if isinstance(prepared, Prepared):
                    size = prepared.image.shape[0] * prepared.image.shape[1]
                    if count and pack_pixels is not None and pixels + size > pack_pixels:
                        carry.insert(0, (item, prepared))  # starts the next pack
                        break
                    count, pixels = count + 1, pixels + size
                entries.append((item, prepared))
                if isinstance(prepared, Result) and len(entries) == 1:
                    break  # nothing trains before it: report it now
            trained = iter(_train_and_write(engine, [(i, p) for i, p in entries if isinstance(p, Prepared)], out_dir, gt_dir,
                                            writer, output_paths, write_result))
            for _item, prepared in entries:  # each reported as soon as its files are written
                yield prepared if isinstance(prepared, Result) else _settle(*next(trained))
    finally:
        stop.set()
        while thread.is_alive():  # unblock the producer
            try:
                ready.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.1)
        writer.shutdown(wait=True)


def _train_and_write(engine: Engine, pack: list[tuple[InputFile, Prepared]], out_dir, gt_dir, writer, output_paths,
                     write_result) -> list[tuple[Result, Future | None]]:
    """Finish the images of ``pack`` (together when there are several; one by one when that fails)
    and queue their writes: (result, write future or None) per image, in order."""
    if not pack:
        return []
    truths = []
    for item, _ in pack:
        gt_path = _find_ground_truth(gt_dir, item.path.stem)
        if gt_dir is not None and gt_path is None:
            log.warning("no ground truth for %s in %s", item.path.name, gt_dir)
        truths.append(gt_path)
    results: list[Result] | None = None
    if len(pack) > 1:
        try:
            results = engine.finish_many([p for _, p in pack], truths)
        except Exception as error:  # noqa: BLE001 - find the image that fails by finishing each alone
            log.warning("a pack of %d images failed (%s: %s); finishing them one by one", len(pack), type(error).__name__, error)
            log.debug("pack failure", exc_info=True)
    if results is None:
        results = [_finish_one(engine, item, prepared, truth) for (item, prepared), truth in zip(pack, truths)]
    return [(result, None if out_dir is None or result.status != "ok" else _queue_write(engine, item, result, out_dir, writer,
                                                                                         output_paths, write_result))
            for (item, _), result in zip(pack, results)]


def _finish_one(engine: Engine, item: InputFile, prepared: Prepared, ground_truth: Path | None) -> Result:
    try:
        return engine.finish(prepared, ground_truth=ground_truth)
    except Exception as error:  # noqa: BLE001
        log.debug("processing failed for %s", item.path, exc_info=True)
        message = str(error) if isinstance(error, (InputError, ImageReadError)) else f"{type(error).__name__}: {error}"
        return Result(input=str(item.path), status="failed", error=message, region_map=prepared.plan.region_map,
                      timings=dict(prepared.timings))


def _queue_write(engine: Engine, item: InputFile, result: Result, out_dir: Path, writer, output_paths, write_result) -> Future:
    paths = output_paths(item.path, out_dir, engine.config, item.relative_dir)

    def write() -> None:
        start = time.perf_counter()
        result.outputs = write_result(result, paths, engine.config)
        result.timings["write"] = time.perf_counter() - start

    return writer.submit(write)


def _settle(result: Result, write: Future | None) -> Result:
    if write is not None:
        try:
            write.result()
        except Exception as error:  # noqa: BLE001 - e.g. unwritable output directory
            result.status, result.error = "failed", f"could not write outputs: {error}"
            log.debug("write failed: %s", traceback.format_exc())
        result.release()
    return result
