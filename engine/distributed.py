"""``mkgan-engine sr --ray``: the batch on a Ray cluster (Ray Data), with a local run's outputs and report.

The driver (the machine that runs the command) does what a local run does before training: the
inputs (:func:`~mkgan_engine.batch.collect_inputs`, by the caller), the output conflicts
(:func:`~mkgan_engine.batch.output_conflicts`) and ``--skip-existing``
(:func:`~mkgan_engine.outputs.output_paths`). The images left go through Ray Data's
``map_batches`` to a fixed pool of :class:`ImageWorker` actors, one :class:`~mkgan_engine.Engine`
each, one image per call; an actor runs :func:`~mkgan_engine.batch.run_batch` on its image (the
local runner's per-image code: read, mask, kernels, ZSSR, atomic writes, the same failure records)
and returns the image's report record as JSON. The driver yields the records in input order.

Every node must see the same paths (a shared file system): the inputs, the output directory
(checked: an actor that cannot see the driver's marker file fails its images, instead of writing
where the driver never looks) and, for relative paths, the driver's working directory.

Faults: an actor process that dies (killed, out of memory) is restarted and its image retried, at
most ``max_retries`` times (Ray's ``max_restarts``/``max_task_retries``); an image whose every
attempt died becomes a "failed" record (Ray Data's ``max_errored_blocks``), like any bad image. The
writes are atomic and seeded: a retried image is written again with the same bytes, and the
driver removes the temporary files (``.<name>.<hex>.tmp``) that a killed writer left.

Ray is imported inside the functions (an optional extra: ``pip install 'mkgan-engine[ray]'``).
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
import secrets
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from mkgan_engine.batch import InputFile
from mkgan_engine.config import EngineConfig
from mkgan_engine.report import Record

log = logging.getLogger(__name__)

SKIPPED = "output exists (--skip-existing)"  # the local runner's reason, word for word
_TEMPORARY = re.compile(r"\.(?P<name>.+)\.[0-9a-f]{12}\.tmp")  # imageio.write_bytes_atomic's names
_KERNEL_MAT = re.compile(r"(?P<stem>.+)_kernel_\d+(_x4)?\.mat")  # outputs.OutputPaths.kernel_mat


def run_ray(
    config: EngineConfig,
    items: Sequence[InputFile | Path],
    out_dir: Path,
    gt_dir: Path | None = None,
    address: str | None = "auto",
    workers: int | None = None,
    gpus_per_worker: float = 0.0,
    cpus_per_worker: float = 1.0,
    max_retries: int = 3,
) -> Iterator[Record]:
    """Super-resolve ``items`` on Ray workers; yield one :class:`~mkgan_engine.report.Record` per
    input, in input order (as :func:`~mkgan_engine.batch.run_batch` yields results).

    config: as for :class:`~mkgan_engine.Engine`; each worker resolves it itself (``device="auto"``
    becomes the worker's GPU when it has one). out_dir: the output directory, on a file system every
    node sees; gt_dir: ground truth, likewise. address: "auto" or None (the cluster in ``RAY_ADDRESS``
    or the latest one started on this machine, else a new local one), or a cluster's address
    ("HOST:6379", "ray://HOST:10001"); when Ray is already initialised in this process it is used
    as is. workers: actors (one Engine each); None: as many as the cluster holds (its GPUs divided
    by ``gpus_per_worker``, else its CPUs divided by ``cpus_per_worker``), at most one per image.
    gpus_per_worker / cpus_per_worker: what each actor reserves (fractions allowed: 0.5 GPU = two
    actors per GPU). max_retries: restarts of a dead actor and retries of its image.

    Connects to Ray now; raises ImportError without Ray, ConnectionError for an unreachable
    address, ValueError for bad settings, conflicting outputs, or workers the cluster cannot hold.
    """
    from mkgan_engine.batch import output_conflicts
    from mkgan_engine.outputs import output_paths

    items = [i if isinstance(i, InputFile) else InputFile(Path(i)) for i in items]
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if gpus_per_worker < 0 or cpus_per_worker <= 0 or max_retries < 0:
        raise ValueError(f"need gpus_per_worker >= 0, cpus_per_worker > 0 and max_retries >= 0, got "
                         f"{gpus_per_worker}, {cpus_per_worker}, {max_retries}")
    if gpus_per_worker > 0 and config.device == "cpu":
        raise ValueError(f"{gpus_per_worker:g} GPU per worker with device cpu: the workers would hold GPUs they never use (use device auto or cuda)")
    conflicts = output_conflicts(items, out_dir, config)
    if conflicts:
        raise ValueError("outputs would destroy data: " + "; ".join(conflicts))
    skip = [config.output.skip_existing and output_paths(i.path, out_dir, config, i.relative_dir).sr.exists() for i in items]
    todo = [(index, item) for index, item in enumerate(items) if not skip[index]]
    started = _connect(address) if todo else False
    try:
        pool = _pool_size(workers, len(todo), gpus_per_worker, cpus_per_worker) if todo else 0
    except BaseException:
        _disconnect(started)
        raise
    # The workers compute every image they get: the driver skipped the existing ones, and a retried
    # image whose SR file a dead worker already wrote is written again (same bytes), not "skipped".
    worker_config = replace(config, output=replace(config.output, skip_existing=False))
    cwd = os.getcwd() if _has_relative_path([out_dir, gt_dir, config, *(i.path for i in items)]) else None
    return _stream(items, skip, todo, worker_config, out_dir, gt_dir, cwd, pool, gpus_per_worker, cpus_per_worker,
                   max_retries, started)


class ImageWorker:
    """A Ray Data actor: one :class:`~mkgan_engine.Engine`, built once; each call super-resolves a
    batch of images exactly as the local runner does and returns their records.

    Call: batch {"index": int64 (n,), "path": str (n,), "relative_dir": str (n,)} -> {"index": (n,),
    "record": (n,) JSON of :meth:`Record.to_json`}. A worker that cannot start (no CUDA for
    ``device="cuda"``, the output directory not shared, ...) fails its images with the reason.
    """

    def __init__(self, config: EngineConfig, out_dir: str, gt_dir: str | None, cwd: str | None, marker: str):
        import platform

        from mkgan_engine.pipeline import Engine

        self.out_dir = Path(out_dir)
        self.gt_dir = None if gt_dir is None else Path(gt_dir)
        self.engine: Engine | None = None
        self.setup_error: str | None = None
        host = platform.node()
        try:
            if cwd is not None:
                try:
                    os.chdir(cwd)
                except OSError as error:
                    raise RuntimeError(f"relative paths need the driver's working directory {cwd}, which this node "
                                       f"cannot enter ({error.strerror}): give absolute paths on a shared file system") from None
            if not (self.out_dir / marker).exists():
                raise RuntimeError(f"the output directory {out_dir} is not the driver's: every node must see it (a shared file system)")
            self.engine = Engine(config)
        except Exception as error:  # noqa: BLE001 - reported per image, like any failure
            self.setup_error = f"Ray worker on {host} could not start: {type(error).__name__}: {error}"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from mkgan_engine.batch import run_batch
        from mkgan_engine.pipeline import Result

        items = [InputFile(Path(str(p)), Path(str(r))) for p, r in zip(batch["path"], batch["relative_dir"])]
        if self.engine is None:
            results = [Result(input=str(item.path), status="failed", error=self.setup_error) for item in items]
        else:
            results = run_batch(self.engine, items, out_dir=self.out_dir, gt_dir=self.gt_dir)
        records = [json.dumps(Record.of(result).to_json()) for result in results]
        return {"index": np.asarray(batch["index"]), "record": np.array(records, dtype=object)}


def _stream(items: list[InputFile], skip: list[bool], todo: list[tuple[int, InputFile]], config: EngineConfig, out_dir: Path,
            gt_dir: Path | None, cwd: str | None, pool: int, gpus_per_worker: float, cpus_per_worker: float, max_retries: int,
            started: bool) -> Iterator[Record]:
    """Run the Ray Data pipeline over ``todo`` [(index, item)]; yield every input's record in input order
    (the skipped ones at their place, each worker's as soon as the ones before it are in)."""
    from mkgan_engine.pipeline import Result

    records: dict[int, Record] = {index: Record.of(Result(input=str(item.path), status="skipped", error=SKIPPED))
                                  for index, item in enumerate(items) if skip[index]}
    position = 0

    def ready() -> Iterator[Record]:
        nonlocal position
        while position in records:
            yield records[position]
            position += 1

    marker = out_dir / f".mkgan-ray-{secrets.token_hex(6)}"  # the workers check they see this output directory
    try:
        yield from ready()
        if not todo:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        marker.write_bytes(b"")
        lost = f"no result from the Ray workers: the worker died on each of the {max_retries + 1} attempt(s) (killed? out of memory?)"
        try:
            # an image whose every attempt died is dropped (then failed below), not the end of the batch
            with _data_context(max_errored_blocks=len(todo), enable_progress_bars=False), _quiet_ray_data_console():
                rows = _dataset(todo, config, out_dir, gt_dir, cwd, marker.name, pool, gpus_per_worker, cpus_per_worker, max_retries)
                for row in rows.iter_rows():
                    records[int(row["index"])] = Record.from_json(json.loads(row["record"]))
                    yield from ready()
        except Exception as error:  # noqa: BLE001 - the cluster failed: the images not done fail, the report is written
            log.debug("the Ray run failed", exc_info=True)
            lost = f"Ray: {type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"
        for index, item in todo:  # dropped by Ray Data (max_errored_blocks: every attempt died) or never run
            records.setdefault(index, Record.of(Result(input=str(item.path), status="failed", error=lost)))
        yield from ready()
        _remove_temporaries([item for _, item in todo], out_dir, config)  # every worker is done now
    finally:
        marker.unlink(missing_ok=True)
        _disconnect(started)


def _dataset(todo: list[tuple[int, InputFile]], config: EngineConfig, out_dir: Path, gt_dir: Path | None, cwd: str | None,
             marker: str, pool: int, gpus_per_worker: float, cpus_per_worker: float, max_retries: int):
    """The Ray Data pipeline: one block (and one actor call) per image -> a fixed pool of ``pool`` actors."""
    import ray.data

    rows = [{"index": index, "path": str(item.path), "relative_dir": str(item.relative_dir)} for index, item in todo]
    blocks = "override_num_blocks" if "override_num_blocks" in inspect.signature(ray.data.from_items).parameters else "parallelism"
    dataset = ray.data.from_items(rows, **{blocks: len(rows)})  # Ray < 2.10 names it parallelism
    # The actors' restart settings go through map_batches' **ray_remote_args, deprecated in Ray 2.60 ("removed
    # in 2.64"); without them Ray Data restarts and retries without bound.
    takes_remote_args = any(p.kind is p.VAR_KEYWORD for p in inspect.signature(dataset.map_batches).parameters.values())
    retries = {"max_restarts": max_retries, "max_task_retries": max_retries} if takes_remote_args else {}
    if not retries:
        log.warning("this Ray cannot bound the retries of a dying worker (max_retries=%d ignored)", max_retries)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return dataset.map_batches(
            ImageWorker,  # looked up at call time: a test substitutes a worker that dies once
            batch_size=1, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=pool, max_tasks_in_flight_per_actor=1),
            fn_constructor_kwargs={"config": config, "out_dir": str(out_dir), "gt_dir": None if gt_dir is None else str(gt_dir),
                                   "cwd": cwd, "marker": marker},
            num_cpus=cpus_per_worker, num_gpus=gpus_per_worker or None, **retries,
        )


@contextmanager
def _data_context(**settings: Any):
    """Ray Data's current DataContext with ``settings`` (the datasets created inside copy it), restored after."""
    from ray.data import DataContext

    context = DataContext.get_current()
    before = {name: getattr(context, name) for name in settings}
    try:
        for name, value in settings.items():
            setattr(context, name, value)
        yield context
    finally:
        for name, value in before.items():
            setattr(context, name, value)


class _ConsoleFilter(logging.Filter):
    """Ray Data's console lines that a run of this tool does not need: its INFO lines ("Starting
    execution of Dataset ...") and the note that its progress bars are off (the CLI draws its own)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING and not record.getMessage().startswith("Progress bars disabled")


@contextmanager
def _quiet_ray_data_console():
    """Filter Ray Data's console handlers (not its log file, ray-data.log in the session's logs) while inside."""
    handlers = [h for h in logging.getLogger("ray.data").handlers if not isinstance(h, logging.FileHandler)
                and type(h).__name__ != "SessionFileHandler"]
    quiet = _ConsoleFilter()
    for handler in handlers:
        handler.addFilter(quiet)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(quiet)


def _connect(address: str | None) -> bool:
    """Connect to (or start) Ray; True when this call started it (then :func:`_disconnect` stops it).
    Keeps the process's SIGTERM handler (ray.init installs its own, which would skip the report)."""
    import signal
    import threading

    import ray

    if ray.is_initialized():
        return False
    if address not in (None, "auto"):
        _probe(address)
    main_thread = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if main_thread else None
    try:
        ray.init(address=None if address in (None, "auto") else address, logging_level=logging.WARNING)
    finally:
        if main_thread and sigterm is not None:
            signal.signal(signal.SIGTERM, sigterm)
    return True


def _probe(address: str, timeout_s: float = 5.0) -> None:
    """ConnectionError unless something listens at ``address`` ("HOST:PORT" or "ray://HOST:PORT"): for
    an unreachable one, ray.init would retry for minutes."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except (OSError, ValueError) as error:
        raise ConnectionError(f"no Ray cluster answers at {address} ({getattr(error, 'strerror', None) or error})") from None


def _disconnect(started: bool) -> None:
    if started:
        import ray

        ray.shutdown()


def _pool_size(workers: int | None, images: int, gpus_per_worker: float, cpus_per_worker: float) -> int:
    """Actors to start: ``workers`` (or what the cluster holds), at most one per image; ValueError
    when the cluster cannot hold one actor (a fixed pool would wait for it forever)."""
    import ray

    resources = ray.cluster_resources()
    fits = int(resources.get("CPU", 0) // cpus_per_worker)
    if gpus_per_worker > 0:
        gpus = resources.get("GPU", 0)
        if gpus < gpus_per_worker:
            raise ValueError(f"each worker needs {gpus_per_worker} GPU and the cluster has {gpus:g}")
        fits = min(fits, int(gpus // gpus_per_worker + 1e-9))
    if fits < 1:
        raise ValueError(f"each worker needs {cpus_per_worker} CPU and the cluster has {resources.get('CPU', 0):g}")
    if workers is not None and workers > fits:
        log.warning("the Ray cluster holds %d worker(s) of %g CPU / %g GPU now, not %d: using %d", fits, cpus_per_worker,
                    gpus_per_worker, workers, fits)
    return max(1, min(workers or fits, fits, images))


def _has_relative_path(values: Sequence[object]) -> bool:
    """Whether a Path among ``values`` (or inside their dataclasses, e.g. the config's weights) is relative."""
    for value in values:
        if isinstance(value, Path) and not value.is_absolute():
            return True
        if is_dataclass(value) and not isinstance(value, type):
            if _has_relative_path([getattr(value, f.name) for f in fields(value)]):
                return True
        elif isinstance(value, (list, tuple)) and _has_relative_path(value):
            return True
    return False


def _remove_temporaries(items: Sequence[InputFile], out_dir: Path, config: EngineConfig) -> list[Path]:
    """Remove the temporary files (``.<name>.<12 hex>.tmp``) of these items' outputs that a killed
    worker left (its atomic write never renamed them); call it once every worker is done. Returns them."""
    from mkgan_engine.outputs import output_paths

    own: dict[Path, set[str]] = {}  # directory -> output names of these items (kernel .mat: by stem)
    stems: dict[Path, set[str]] = {}
    for item in items:
        paths = output_paths(item.path, out_dir, config, item.relative_dir)
        own.setdefault(paths.directory, set()).update((paths.sr.name, paths.kernels.name, paths.mask.name, paths.preview.name))
        stems.setdefault(paths.directory, set()).add(paths.stem)
    removed = []
    for directory, names in own.items():
        for path in directory.glob(".*.tmp") if directory.is_dir() else ():
            match = _TEMPORARY.fullmatch(path.name)
            mat = match and _KERNEL_MAT.fullmatch(match["name"])
            if match and (match["name"] in names or (mat and mat["stem"] in stems[directory])):
                path.unlink(missing_ok=True)
                removed.append(path)
    if removed:
        log.info("removed %d temporary file(s) left by killed Ray workers", len(removed))
    return removed
