"""Cost of one training step of each trainer at 1, 2, 8 and 64 members: time, launches, memory, syncs.

* KernelGAN: one ``_Batch.step()`` (one generator and one discriminator update of every member),
  timed step by step after a warm-up (CUDA events on the GPU, ``perf_counter`` on the CPU); the
  median is reported.
* ZSSR: one iteration of ``zssr.train_members`` (father crops, sons, forward, backward, Adam; the
  reconstruction error every ``rec_every`` iterations included, the learning-rate checks excluded),
  measured as the difference of two whole training runs of ``short`` and ``short + timed``
  iterations divided by ``timed``: the run's setup cancels out, and no copy of the loop is needed.

Per member count: ``step_ms``, ``per_member_ms``, device kernels per step (``torch.profiler``; on the
CPU the top-level ``aten::`` ops instead), memcpy/memset and ``*Synchronize`` runtime calls per step,
and ``peak_mib`` (``torch.cuda.max_memory_allocated`` of the timed run, MiB). On CUDA also
``sync_sites``: the lines of our code that synchronise with the host within those steps
(``torch.cuda.set_sync_debug_mode``; empty when the steps run free of host syncs).

``kernelgan-graphs`` / ``zssr-graphs`` (``--trainers``) time the same steps with ``cuda_graphs=True``
(the step captured once and replayed; on the CPU the same eager step). The JSON is rewritten after
each trainer, so a run cut short keeps what it measured.

    python benchmarks/gpu_steps.py --out steps.json                       # CUDA, paper presets
    python benchmarks/gpu_steps.py --cpu --members 1,2 --out steps.json   # tiny CPU mode (dry run)
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import platform
import statistics
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from mkgan_engine.cpp_ext import masked_crop_status
from mkgan_engine.imageio import read_image
from mkgan_engine.train import kernelgan, sampler
from mkgan_engine.train.config import KernelGANConfig, ZSSRConfig
from mkgan_engine.train.degradation import anisotropic_gaussian
from mkgan_engine.train.generator import output_size
from mkgan_engine.train.zssr import align_kernels, train_on_image

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGE = REPO / "samples" / "set5_bird.png"  # 144x144 LR, in git
PROJECT_DIRS = tuple(str(REPO / d) for d in ("engine", "train", "export", "cpp_ext"))
SYNC_MESSAGE = "synchronizing CUDA operation"


# ------------------------------------------------------------------------------------------------
# Measuring
# ------------------------------------------------------------------------------------------------
def elapsed_ms(fn: Callable[[], object], device: torch.device) -> float:
    """Wall time of ``fn()`` in ms: CUDA events around it on the GPU (queued work included), else
    ``perf_counter``."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def count_ops(fn: Callable[[], object], device: torch.device) -> dict[str, int]:
    """What ``fn()`` launches, under ``torch.profiler``: on CUDA ``kernels`` (device kernels),
    ``memcpy`` (copies and memsets) and ``syncs`` (``*Synchronize`` runtime calls); on the CPU
    ``aten_ops`` (top-level ``aten::`` ops, i.e. those not called from another aten op)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
    events = prof.events()
    if device.type != "cuda":
        top = [e for e in events if e.name.startswith("aten::")
               and not (e.cpu_parent is not None and e.cpu_parent.name.startswith("aten::"))]
        return {"aten_ops": len(top)}
    on_device = [e for e in events if e.device_type == DeviceType.CUDA]
    copies = sum(1 for e in on_device if e.name.startswith(("Memcpy", "Memset")))
    syncs = sum(1 for e in events if e.device_type == DeviceType.CPU and "Synchronize" in e.name)
    return {"kernels": len(on_device) - copies, "memcpy": copies, "syncs": syncs}


def _project_site(stack: list[traceback.FrameSummary]) -> str:
    """The innermost frame of our package in a stack, as "folder/file.py:line (function)" (else the
    innermost frame outside the warnings module)."""
    frames = [f for f in stack if Path(f.filename).name != "warnings.py"]
    for frame in reversed(frames):
        if frame.filename.startswith(PROJECT_DIRS) or "/mkgan_engine/" in frame.filename:
            return f"{Path(frame.filename).parent.name}/{Path(frame.filename).name}:{frame.lineno} ({frame.name})"
    frame = frames[-1]
    return f"{frame.filename}:{frame.lineno} ({frame.name})"


def sync_sites(fn: Callable[[], object]) -> dict[str, int]:
    """Run ``fn()`` with CUDA's sync debug mode on "warn" and return where it synchronised with the
    host: {our innermost source line: times}. Empty when ``fn`` queues its work without waiting."""
    sites: collections.Counter[str] = collections.Counter()

    def record(message, category, filename, lineno, file=None, line=None) -> None:
        if SYNC_MESSAGE in str(message):
            sites[_project_site(traceback.extract_stack()[:-1])] += 1

    torch.cuda.synchronize()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    return dict(sites)


def peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


# ------------------------------------------------------------------------------------------------
# The two trainers
# ------------------------------------------------------------------------------------------------
def load_lr(path: Path = DEFAULT_IMAGE) -> np.ndarray:
    """float32 HxWx3 in [0, 1]."""
    return read_image(path).rgb


def kernelgan_batch(image: np.ndarray, members: int, config: KernelGANConfig, device: torch.device,
                    dtype: torch.dtype = torch.float32) -> kernelgan._Batch:
    """KernelGAN's training state for ``members`` members on one image (HxWx3), whole-image crop
    maps, seeds 0..M-1, training precision ``dtype``: what :func:`kernelgan.estimate_kernels` trains
    (its ``step()`` is one iteration)."""
    arr, _ = kernelgan.prepare_image(image)
    g_map, d_map = sampler.region_crop_maps(arr, None, config.crop_size, output_size(config.crop_size, config.g_kernel_sizes))
    shape = arr.shape[:2]
    images = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).to(device=device, dtype=dtype)
    return kernelgan._Batch(
        images[None].expand(members, -1, -1, -1).contiguous(),
        sampler.build_cdfs([g_map.prob] * members, shape, device),
        sampler.build_cdfs([d_map.prob] * members, shape, device),
        list(range(members)), config,
    )


def zssr_runner(image: np.ndarray, members: int, config: ZSSRConfig, device: torch.device) -> Callable[[int], object]:
    """``train(n)``: ZSSR's training of ``members`` members (whole image, seeds 0..M-1, one
    anisotropic Gaussian kernel each) for exactly ``n`` iterations, with no learning-rate check
    and a single stopping check at the end."""
    lr = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None].to(device)
    kernels = align_kernels([anisotropic_gaussian(13, 1.0 + 0.05 * i, 2.0, 0.1 * i, 2) for i in range(members)])
    seeds = list(range(members))

    def train(n: int) -> object:
        steady = config.with_(iterations=n, min_iterations=n, lr_policy_every=n + 1)
        return train_on_image(lr, kernels, 2, steady, [None] * members, seeds)

    return train


def kernelgan_row(image: np.ndarray, members: int, config: KernelGANConfig, device: torch.device,
                  warmup: int, timed: int, check_syncs: bool) -> dict:
    """One KernelGAN step at ``members`` members (see the module docstring); ``check_syncs``: also
    record the host syncs of two steps (CUDA only)."""
    batch = kernelgan_batch(image, members, config, device)
    for _ in range(warmup):
        batch.step()
    reset_peak(device)
    times = [elapsed_ms(batch.step, device) for _ in range(timed)]
    row = {"members": members, "step_ms": statistics.median(times), "step_ms_min": min(times),
           "per_member_ms": statistics.median(times) / members, "peak_mib": peak_mib(device)}
    steps = 2
    row.update({f"{k}_per_step": v / steps for k, v in count_ops(lambda: [batch.step() for _ in range(steps)], device).items()})
    if check_syncs and device.type == "cuda":
        row["sync_sites"] = {site: n / steps for site, n in sync_sites(lambda: [batch.step() for _ in range(steps)]).items()}
    return row


def zssr_row(image: np.ndarray, members: int, config: ZSSRConfig, device: torch.device, short: int, timed: int,
             check_syncs: bool) -> dict:
    """One ZSSR iteration at ``members`` members: runs of ``short`` and ``short + timed`` iterations;
    ``check_syncs``: also the host syncs per iteration (the same difference, CUDA only)."""
    train = zssr_runner(image, members, config, device)
    train(short)  # warm-up: allocator, cuDNN plans, the masked-crop op
    base = elapsed_ms(lambda: train(short), device)
    reset_peak(device)
    full = elapsed_ms(lambda: train(short + timed), device)
    step = max(full - base, 0.0) / timed
    row = {"members": members, "step_ms": step, "per_member_ms": step / members, "peak_mib": peak_mib(device),
           "run_ms": {str(short): base, str(short + timed): full}}
    few, many = count_ops(lambda: train(short), device), count_ops(lambda: train(short + timed), device)
    row.update({f"{k}_per_step": (many[k] - few[k]) / timed for k in many})
    if check_syncs and device.type == "cuda":
        row["sync_sites"] = per_iteration_sync_sites(train, short, timed)
    return row


def per_iteration_sync_sites(train: Callable[[int], object], short: int, timed: int) -> dict[str, float]:
    """The host syncs of ``train(n)`` that grow with ``n``: {site: syncs per iteration}, from runs
    of ``short`` and ``short + timed`` iterations (setup and the final check cancel out)."""
    few, many = sync_sites(lambda: train(short)), sync_sites(lambda: train(short + timed))
    return {site: (many.get(site, 0) - few.get(site, 0)) / timed for site in {*few, *many} if many.get(site, 0) != few.get(site, 0)}


def configs(cpu: bool) -> tuple[KernelGANConfig, ZSSRConfig]:
    """The paper presets, or (``cpu``) tiny ones: narrow networks, small ZSSR crops."""
    kg, zs = KernelGANConfig.preset("paper"), ZSSRConfig.preset("paper")
    if cpu:
        kg = kg.with_(g_channels=16, d_channels=16)
        zs = zs.with_(crop_size=24, channels=8, rec_every=2)
    return kg, zs


def measure(rows_of: Callable[[int], dict], members: list[int]) -> list[dict]:
    """One row per member count; a failure (out of memory, say) is recorded and the rest go on."""
    rows = []
    for m in members:
        try:
            rows.append(rows_of(m))
        except Exception as error:  # noqa: BLE001 - reported in the JSON, the other sizes still run
            first = (str(error).splitlines() or [""])[0]
            rows.append({"members": m, "error": f"{type(error).__name__}: {first[:300]}"})
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="tiny mode on the CPU (what the dry run uses)")
    parser.add_argument("--members", default="1,2,8,64")
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    parser.add_argument("--trainers", default="kernelgan,zssr,kernelgan-graphs,zssr-graphs")
    parser.add_argument("--out", type=Path, help="JSON file (else stdout only)")
    args = parser.parse_args(argv)

    device = torch.device("cpu" if args.cpu or not torch.cuda.is_available() else "cuda")
    cpu = device.type == "cpu"
    members = [int(m) for m in args.members.split(",")]
    kg, zs = configs(cpu)
    warmup, timed = (1, 2) if cpu else (5, 20)

    def zssr_counts(m: int) -> tuple[int, int]:
        """(short, timed) iterations: fewer where one iteration is slow (tiny CPU mode, 64 members)."""
        return (2, 2) if cpu else (5, 20) if m <= 8 else (5, 10)

    image = load_lr(args.image)

    report: dict = {
        "device": platform.processor() or "cpu" if cpu else torch.cuda.get_device_name(device),
        "torch": torch.__version__, "cuda": torch.version.cuda, "threads": torch.get_num_threads(),
        "image": str(args.image.name), "image_shape": list(image.shape),
        "masked_crop": masked_crop_status(build=True)["detail"],
        "configs": "tiny CPU (see configs())" if cpu else "paper presets",
        "kernelgan_config": dataclasses.asdict(kg), "zssr_config": dataclasses.asdict(zs),
        "method": {"kernelgan": f"median of {timed} steps after {warmup}",
                   "zssr": "(run of short + timed iterations - run of short) / timed, "
                           + ", ".join(f"{m} members: {zssr_counts(m)}" for m in members)},
    }
    first = members[0]  # host syncs do not depend on the member count: checked once
    for trainer in args.trainers.split(","):
        graphs = trainer.endswith("-graphs")
        if trainer.startswith("kernelgan"):
            config = kg.with_(cuda_graphs=graphs)
            report[trainer] = measure(lambda m: kernelgan_row(image, m, config, device, warmup, timed, m == first), members)
        elif trainer.startswith("zssr"):
            config = zs.with_(cuda_graphs=graphs)
            report[trainer] = measure(lambda m: zssr_row(image, m, config, device, *zssr_counts(m), m == first), members)
        else:
            raise SystemExit(f"unknown trainer {trainer!r}")
        if args.out:
            args.out.write_text(json.dumps(report, indent=1) + "\n")
    if not args.out:
        print(json.dumps(report, indent=1))


if __name__ == "__main__":
    sys.exit(main())
