"""End-to-end throughput: batched members (all regions of an image train together) against our own
unbatched eager path (one region at a time) and against cross-image packing (the regions of all
images in one KernelGAN and one ZSSR batch, what ``mkgan-engine sr --pack N`` does), per stage, with
peak GPU memory.

Each image is a real photo cropped to ``--size`` LR pixels with a two-region mask (left/right
halves blurred by two different kernels, protocol-S style), so every run trains 2 KernelGAN and
2 ZSSR members. Reports per image end-to-end seconds, images/hour, the per-stage split, peak GPU
memory, and the kernels' and PSNR's agreement between the two paths.

    # the issue's setting on an H100 (paper preset, x2, 2 regions, 512 px LR):
    python benchmarks/gpu_throughput.py --device cuda --preset paper --size 512 --images 4 \
        --results benchmarks/RESULTS.md --section gpu-throughput
    # the CPU figure on the 2-core machine:
    python benchmarks/gpu_throughput.py --device cpu --preset fast --size 128 --images 2 \
        --results benchmarks/RESULTS.md --section cpu-throughput
    # the GPU check kit's reduced run (benchmarks/gpu_check.sh): shorter schedules, one warm-up, JSON
    python benchmarks/gpu_throughput.py --device cuda --preset paper --size 256 --images 2 --warmup 1 \
        --kernelgan iterations=1000 --zssr iterations=1000 --json OUT/throughput.json

``--warmup N`` first runs N untimed images (the first photo, both paths, at most 50 iterations per
stage: CUDA context, cuDNN plans, the masked-crop op, the allocator); ``--kernelgan NAME=VALUE`` /
``--zssr NAME=VALUE`` override config fields as in benchmarks/run.py; ``--json`` gets the table's
numbers and every image's, rewritten after each image (a run cut short keeps what it measured).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import add_override_option, override_config, publish  # noqa: E402  (benchmarks/run.py)

from mkgan_engine.imageio import read_image  # noqa: E402
from mkgan_engine.metrics import psnr  # noqa: E402
from mkgan_engine.train.config import KernelGANConfig, ZSSRConfig  # noqa: E402
from mkgan_engine.train.degradation import anisotropic_gaussian, degrade  # noqa: E402
from mkgan_engine.train.kernel import kernel_error  # noqa: E402
from mkgan_engine.train.kernelgan import estimate_kernels  # noqa: E402
from mkgan_engine.train.merge import merge_regions  # noqa: E402
from mkgan_engine.train.zssr import ZSSRJob, run_zssr, run_zssr_many  # noqa: E402

DEFAULT_IMAGES = Path(__file__).resolve().parents[1] / "samples" / "hr"


def make_case(path: Path, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(LR float32 size x size x 3 in [0,1], HR 2size x 2size x 3, region labels int size x size):
    the photo tiled/cropped to 2*size HR, left half blurred with a sharp kernel, right half with a
    wide one, subsampled x2."""
    hr = read_image(path).rgb
    reps = (int(np.ceil(2 * size / hr.shape[0])), int(np.ceil(2 * size / hr.shape[1])), 1)
    hr = np.tile(hr, reps)[: 2 * size, : 2 * size]
    sharp, wide = anisotropic_gaussian(13, 0.6, 0.5, 0.3, 2), anisotropic_gaussian(13, 4.0, 1.5, 1.0, 2)
    lr = np.concatenate([degrade(hr, sharp, 2)[:, : size // 2], degrade(hr, wide, 2)[:, size // 2 :]], axis=1)
    labels = np.zeros((size, size), np.int32)
    labels[:, size // 2 :] = 1
    return lr, hr, labels


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_case(lr, labels, kg: KernelGANConfig, zs: ZSSRConfig, device: str, batched: bool) -> dict:
    """One image through KernelGAN -> ZSSR -> merge; returns seconds per stage, kernels and the SR.
    batched: both regions in one member batch per stage (:func:`run_packed` of this image alone);
    else one region at a time."""
    if batched:
        out = run_packed([(lr, labels)], kg, zs, device)
        return {**out, "kernels": out["kernels"][0], "sr": out["sr"][0]}
    masks = [labels == 0, labels == 1]
    seeds = [0, 1]
    t0 = time.perf_counter()
    kernels = [estimate_kernels([lr], [m], kg, [s], device)[0].kernel for m, s in zip(masks, seeds)]
    sync(device)
    t1 = time.perf_counter()
    srs = [run_zssr(lr, [k], 2, zs, masks=[m], seeds=[s], device=device).images[0] for k, m, s in zip(kernels, masks, seeds)]
    sync(device)
    t2 = time.perf_counter()
    sr = merge_regions(srs, np.repeat(np.repeat(labels, 2, axis=0), 2, axis=1), [0, 1], scale=2)
    t3 = time.perf_counter()
    return {"kernelgan": t1 - t0, "zssr": t2 - t1, "merge": t3 - t2, "total": t3 - t0, "kernels": kernels, "sr": sr}


def run_packed(cases: list[tuple[np.ndarray, np.ndarray]], kg: KernelGANConfig, zs: ZSSRConfig, device: str) -> dict:
    """All images (LR, labels) at once: their 2 regions each in one KernelGAN and one ZSSR member
    batch (seeds 0, 1 per image). Seconds per stage are per image (the
    packed call's over the number of images); kernels and SR images are lists per image."""
    masks = [[labels == 0, labels == 1] for _, labels in cases]
    t0 = time.perf_counter()
    estimates = estimate_kernels([lr for lr, _ in cases for _ in range(2)], [m for ms in masks for m in ms], kg,
                                 [0, 1] * len(cases), device)
    kernels = [[estimates[2 * i].kernel, estimates[2 * i + 1].kernel] for i in range(len(cases))]
    sync(device)
    t1 = time.perf_counter()
    results = run_zssr_many([ZSSRJob(lr, ks, ms, [0, 1]) for (lr, _), ks, ms in zip(cases, kernels, masks)], 2, zs, device=device)
    sync(device)
    t2 = time.perf_counter()
    srs = [merge_regions(r.images, np.repeat(np.repeat(labels, 2, axis=0), 2, axis=1), [0, 1], scale=2)
           for r, (_, labels) in zip(results, cases)]
    t3 = time.perf_counter()
    n = len(cases)
    return {"kernelgan": (t1 - t0) / n, "zssr": (t2 - t1) / n, "merge": (t3 - t2) / n, "total": (t3 - t0) / n,
            "kernels": kernels, "sr": srs}


WARMUP_ITERATIONS = 50  # per stage in a --warmup run


def capped(kg: KernelGANConfig, zs: ZSSRConfig, iterations: int) -> tuple[KernelGANConfig, ZSSRConfig]:
    """The configs with at most ``iterations`` iterations per stage (warm-up runs)."""
    n = min(iterations, kg.iterations, zs.iterations)
    return kg.with_(iterations=n), zs.with_(iterations=n, min_iterations=min(zs.min_iterations, n))


def write_json(path: Path | None, header: dict, runs: dict[str, list[dict]], rows: list[tuple[str, dict, float]],
               complete: bool) -> None:
    """Every image's seconds and Y-PSNR per path, and (when ``complete``) the table's means."""
    if path is None:
        return
    strip = [{k: v for k, v in r.items() if k not in ("kernels", "sr")} for path_runs in runs.values() for r in path_runs]
    data = {**header, "complete": complete, "runs": strip,
            "paths": [{"path": name, **mean, "images_per_hour": 3600 / mean["total"],
                       "peak_gib": None if np.isnan(peak) else peak} for name, mean, peak in rows]}
    path.write_text(json.dumps(data, indent=1) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", choices=("fast", "paper"), default="paper")
    parser.add_argument("--size", type=int, default=512, help="LR side in pixels")
    parser.add_argument("--images", type=int, default=2, help="how many photos from --dir")
    parser.add_argument("--dir", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--paths", default="batched,unbatched,packed", help="packed runs last, all images at once")
    parser.add_argument("--warmup", type=int, default=0, help="untimed warm-up images before the timed ones")
    add_override_option(parser, "kernelgan", "iterations=1000")
    add_override_option(parser, "zssr", "iterations=1000")
    parser.add_argument("--json", type=Path, help="write the numbers here too (JSON)")
    parser.add_argument("--results", type=Path)
    parser.add_argument("--section", default="throughput")
    args = parser.parse_args(argv)

    kg = override_config(KernelGANConfig.preset(args.preset), args.kernelgan)
    zs = override_config(ZSSRConfig.preset(args.preset), args.zssr)
    photos = sorted(p for p in args.dir.iterdir() if p.suffix.lower() in {".png", ".jpg"})[: args.images]
    cuda = args.device.startswith("cuda")
    paths = args.paths.split(",")
    device_name = torch.cuda.get_device_name() if cuda else platform.processor() or "cpu"
    header = {"device": device_name, "torch": torch.__version__, "preset": args.preset, "size": args.size,
              "kernelgan_overrides": args.kernelgan, "zssr_overrides": args.zssr, "warmup": args.warmup}
    for _ in range(args.warmup):
        lr, _hr, labels = make_case(photos[0], args.size)
        for path_name in paths:
            if path_name == "packed":
                run_packed([(lr, labels)] * 2, *capped(kg, zs, WARMUP_ITERATIONS), args.device)
            else:
                run_case(lr, labels, *capped(kg, zs, WARMUP_ITERATIONS), args.device, path_name == "batched")
    runs: dict[str, list[dict]] = {name: [] for name in paths}
    peaks = {name: 0.0 if cuda else float("nan") for name in paths}
    cases = [make_case(photo, args.size) for photo in photos]
    for photo, (lr, hr, labels) in zip(photos, cases):  # image by image: a run cut short has both paths of its first images
        for path_name in (p for p in paths if p != "packed"):
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            out = run_case(lr, labels, kg, zs, args.device, path_name == "batched")
            out["psnr"] = psnr(out["sr"], hr, shave=2, y=True)
            out.update(image=photo.name, path=path_name)
            if cuda:
                peaks[path_name] = max(peaks[path_name], torch.cuda.max_memory_allocated() / 2**30)
            runs[path_name].append(out)
            print(f"{path_name:9s} {photo.name}: {out['total']:.1f} s (KernelGAN {out['kernelgan']:.1f}, ZSSR {out['zssr']:.1f}), "
                  f"Y-PSNR {out['psnr']:.2f} dB", flush=True)
        write_json(args.json, header, runs, [], complete=False)
    if "packed" in paths:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        out = run_packed([(lr, labels) for lr, _, labels in cases], kg, zs, args.device)
        if cuda:
            peaks["packed"] = torch.cuda.max_memory_allocated() / 2**30
        for photo, (_, hr, _), kernels, sr in zip(photos, cases, out["kernels"], out["sr"]):
            runs["packed"].append({**{k: out[k] for k in ("kernelgan", "zssr", "merge", "total")}, "kernels": kernels, "sr": sr,
                                   "psnr": psnr(sr, hr, shave=2, y=True), "image": photo.name, "path": "packed"})
        print(f"packed    {len(photos)} images: {out['total']:.1f} s per image", flush=True)
    rows = []
    for path_name in paths:
        mean = {k: float(np.mean([r[k] for r in runs[path_name]])) for k in ("kernelgan", "zssr", "merge", "total", "psnr")}
        rows.append((path_name, mean, peaks[path_name]))

    given = [f"{stage} {', '.join(items)}" for stage, items in (("KernelGAN", args.kernelgan), ("ZSSR", args.zssr)) if items]
    overrides = f" ({'; '.join(given)})" if given else ""
    lines = [
        f"Device: {device_name} "
        f"({torch.get_num_threads()} threads), torch {torch.__version__}; preset {args.preset}{overrides}, x2, 2 regions, "
        f"{args.size} px LR, {len(photos)} image(s), {args.warmup} warm-up image(s).",
        "",
        "| path | s / image | images / hour | KernelGAN s | ZSSR s | merge s | peak GPU GiB | Y-PSNR dB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, m, peak in rows:
        lines.append(f"| {name} | {m['total']:.1f} | {3600 / m['total']:.0f} | {m['kernelgan']:.1f} | {m['zssr']:.1f} | "
                     f"{m['merge']:.2f} | {'-' if np.isnan(peak) else f'{peak:.2f}'} | {m['psnr']:.2f} |")
    if {"batched", "unbatched"} <= runs.keys():
        diffs = [kernel_error(a, b)["l1"] for ra, rb in zip(runs["batched"], runs["unbatched"])
                 for a, b in zip(ra["kernels"], rb["kernels"])]
        dpsnr = [ra["psnr"] - rb["psnr"] for ra, rb in zip(runs["batched"], runs["unbatched"])]
        lines += ["", f"Batched vs unbatched: kernel L1 difference max {max(diffs):.2e}; "
                      f"Y-PSNR difference max {max(abs(d) for d in dpsnr):.3f} dB (same seeds)."]
    if {"batched", "packed"} <= runs.keys():
        diffs = [kernel_error(a, b)["l1"] for ra, rb in zip(runs["batched"], runs["packed"]) for a, b in zip(ra["kernels"], rb["kernels"])]
        dpsnr = [ra["psnr"] - rb["psnr"] for ra, rb in zip(runs["batched"], runs["packed"])]
        lines += ["", f"Packed vs batched: kernel L1 difference max {max(diffs):.2e}; "
                      f"Y-PSNR difference max {max(abs(d) for d in dpsnr):.3f} dB (same seeds; float32 rounding of batches of other sizes)."]
    write_json(args.json, header, runs, rows, complete=True)
    command = "python benchmarks/gpu_throughput.py " + " ".join(argv if argv is not None else sys.argv[1:])
    publish(f"Command: `{command}`\n\n" + "\n".join(lines) + "\n", args.results, args.section)


if __name__ == "__main__":
    main()
