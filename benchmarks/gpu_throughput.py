"""End-to-end throughput: batched members (all regions of an image train together) against our own
unbatched eager path (one region at a time), per stage, with peak GPU memory.

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
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import publish  # noqa: E402  (benchmarks/run.py)

from mkgan_engine.imageio import read_image  # noqa: E402
from mkgan_engine.metrics import psnr  # noqa: E402
from mkgan_engine.train.config import KernelGANConfig, ZSSRConfig  # noqa: E402
from mkgan_engine.train.degradation import anisotropic_gaussian, degrade  # noqa: E402
from mkgan_engine.train.kernel import kernel_error  # noqa: E402
from mkgan_engine.train.kernelgan import estimate_kernels  # noqa: E402
from mkgan_engine.train.merge import merge_regions  # noqa: E402
from mkgan_engine.train.zssr import run_zssr  # noqa: E402

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
    """One image through KernelGAN -> ZSSR -> merge; returns seconds per stage, kernels and the SR."""
    masks = [labels == 0, labels == 1]
    seeds = [0, 1]
    t0 = time.perf_counter()
    if batched:
        kernels = [e.kernel for e in estimate_kernels([lr, lr], masks, kg, seeds, device)]
    else:
        kernels = [estimate_kernels([lr], [m], kg, [s], device)[0].kernel for m, s in zip(masks, seeds)]
    sync(device)
    t1 = time.perf_counter()
    if batched:
        srs = run_zssr(lr, kernels, 2, zs, masks=masks, seeds=seeds, device=device).images
    else:
        srs = [run_zssr(lr, [k], 2, zs, masks=[m], seeds=[s], device=device).images[0] for k, m, s in zip(kernels, masks, seeds)]
    sync(device)
    t2 = time.perf_counter()
    labels_hr = np.repeat(np.repeat(labels, 2, axis=0), 2, axis=1)
    sr = merge_regions(srs, labels_hr, [0, 1], scale=2)
    t3 = time.perf_counter()
    return {"kernelgan": t1 - t0, "zssr": t2 - t1, "merge": t3 - t2, "total": t3 - t0, "kernels": kernels, "sr": sr}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", choices=("fast", "paper"), default="paper")
    parser.add_argument("--size", type=int, default=512, help="LR side in pixels")
    parser.add_argument("--images", type=int, default=2, help="how many photos from --dir")
    parser.add_argument("--dir", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--paths", default="batched,unbatched")
    parser.add_argument("--results", type=Path)
    parser.add_argument("--section", default="throughput")
    args = parser.parse_args(argv)

    kg, zs = KernelGANConfig.preset(args.preset), ZSSRConfig.preset(args.preset)
    photos = sorted(p for p in args.dir.iterdir() if p.suffix.lower() in {".png", ".jpg"})[: args.images]
    cuda = args.device.startswith("cuda")
    rows, outputs = [], {}
    for path_name in args.paths.split(","):
        batched = path_name == "batched"
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        runs = []
        for photo in photos:
            lr, hr, labels = make_case(photo, args.size)
            out = run_case(lr, labels, kg, zs, args.device, batched)
            out["psnr"] = psnr(out["sr"], hr, shave=2, y=True)
            runs.append(out)
            print(f"{path_name:9s} {photo.name}: {out['total']:.1f} s (KernelGAN {out['kernelgan']:.1f}, ZSSR {out['zssr']:.1f}), "
                  f"Y-PSNR {out['psnr']:.2f} dB", flush=True)
        outputs[path_name] = runs
        mean = {k: float(np.mean([r[k] for r in runs])) for k in ("kernelgan", "zssr", "merge", "total", "psnr")}
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
        rows.append((path_name, mean, peak))

    lines = [
        f"Device: {torch.cuda.get_device_name() if cuda else platform.processor() or 'cpu'} "
        f"({torch.get_num_threads()} threads), torch {torch.__version__}; preset {args.preset}, x2, 2 regions, "
        f"{args.size} px LR, {len(photos)} image(s).",
        "",
        "| path | s / image | images / hour | KernelGAN s | ZSSR s | merge s | peak GPU GiB | Y-PSNR dB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, m, peak in rows:
        lines.append(f"| {name} | {m['total']:.1f} | {3600 / m['total']:.0f} | {m['kernelgan']:.1f} | {m['zssr']:.1f} | "
                     f"{m['merge']:.2f} | {'-' if np.isnan(peak) else f'{peak:.2f}'} | {m['psnr']:.2f} |")
    if {"batched", "unbatched"} <= outputs.keys():
        diffs = [kernel_error(a, b)["l1"] for ra, rb in zip(outputs["batched"], outputs["unbatched"])
                 for a, b in zip(ra["kernels"], rb["kernels"])]
        dpsnr = [ra["psnr"] - rb["psnr"] for ra, rb in zip(outputs["batched"], outputs["unbatched"])]
        lines += ["", f"Batched vs unbatched: kernel L1 difference max {max(diffs):.2e}; "
                      f"Y-PSNR difference max {max(abs(d) for d in dpsnr):.3f} dB (same seeds)."]
    command = "python benchmarks/gpu_throughput.py " + " ".join(argv if argv is not None else sys.argv[1:])
    publish(f"Command: `{command}`\n\n" + "\n".join(lines) + "\n", args.results, args.section)


if __name__ == "__main__":
    main()
