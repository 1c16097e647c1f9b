"""KernelGAN kernel recovery: a wide anisotropic and a narrow isotropic x2 kernel, per photo and seed.

Each photo is degraded twice (blur by correlation, subsample by 2) and KernelGAN estimates the
kernel of each LR image; every (photo, kernel, seed) is one member of a single batched call. The
table gives the estimated kernel's sigmas (square roots of the covariance's eigenvalues, in HR
pixels) and major-axis angle next to the truth, the kernel PSNR and restarts, then two counts: in
how many (photo, seed) pairs the wide kernel's estimate has the larger 1-sigma area, and how many
wide estimates have their axis within 30 deg of the truth. ``--box 2`` box-averages urban100
photos by 2 first (a sharper "HR" with less blur of its own).

    python benchmarks/kernel_recovery.py --preset fast --seeds 0,1,2 \\
        --photos set14/man.png,urban100/img_009.png --results benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mkgan_engine.imageio import read_image
from mkgan_engine.train.config import KERNEL_MODELS, KernelGANConfig
from mkgan_engine.train.degradation import anisotropic_gaussian, degrade
from mkgan_engine.train.kernel import kernel_error, kernel_moments
from mkgan_engine.train.kernelgan import estimate_kernels
from run import add_kernelgan_option, override_config, publish  # benchmarks/run.py: a script's folder is on sys.path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "images"
KERNELS = {  # name -> (lambda_1, lambda_2, theta) of anisotropic_gaussian, 13x13 at x2
    "wide": (4.0, 0.6, np.pi / 3),  # sigmas 2.00 / 0.77 px, major axis at 60 deg
    "narrow": (0.5, 0.5, 0.0),  # sigma 0.71 px
}


def load_hr(name: str, box: int) -> np.ndarray:
    """float32 HxWx3 in [0, 1], box-averaged by ``box`` and cropped to even sides."""
    hr = read_image(SHARED / name).rgb
    if box > 1:
        h, w = hr.shape[0] // box * box, hr.shape[1] // box * box
        hr = hr[:h, :w].reshape(h // box, box, w // box, box, 3).mean(axis=(1, 3))
    return np.ascontiguousarray(hr[: hr.shape[0] // 2 * 2, : hr.shape[1] // 2 * 2], dtype=np.float32)


def angle_error(estimate_rad: float, truth_rad: float) -> float:
    """Smallest difference between two axis angles, in degrees in [0, 90]."""
    return abs((np.degrees(estimate_rad - truth_rad) + 90.0) % 180.0 - 90.0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", default="set14/man.png,urban100/img_009.png")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--preset", default="fast", choices=["fast", "paper"])
    parser.add_argument("--box", type=int, default=2, help="box-average urban100 photos by this first (sharper HR)")
    parser.add_argument("--kernel-model", choices=KERNEL_MODELS, default="deep-linear")
    add_kernelgan_option(parser)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--results", type=Path, default=None)
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    photos = args.photos.split(",")

    members, lrs, seed_list = [], [], []
    for photo in photos:
        hr = load_hr(photo, args.box if photo.startswith("urban100/") else 1)
        for kname, params in KERNELS.items():
            truth = anisotropic_gaussian(13, *params, 2)
            lr = degrade(hr, truth, 2)
            for seed in seeds:
                members.append((photo, kname, seed, truth, hr.shape))
                lrs.append(lr)
                seed_list.append(seed)
    t0 = time.perf_counter()
    config = override_config(KernelGANConfig.preset(args.preset).with_(kernel_model=args.kernel_model), args.kernelgan)
    estimates = estimate_kernels(lrs, None, config, seed_list, device=args.device)
    elapsed = time.perf_counter() - t0

    rows, areas, aligned = [], {}, 0
    for (photo, kname, seed, truth, shape), est in zip(members, estimates):
        a, b, theta = kernel_moments(est.kernel)
        ta, tb, ttheta = kernel_moments(truth)
        areas[photo, kname, seed] = a * b
        aligned += kname == "wide" and angle_error(theta, ttheta) <= 30.0
        angle = f"{np.degrees(theta):.0f} ({angle_error(theta, ttheta):.0f} off)" if kname == "wide" else f"{np.degrees(theta):.0f}"
        err = kernel_error(est.kernel, truth)
        rows.append(f"| {photo} ({shape[1]}x{shape[0]} HR) | {kname} | {seed} | {ta:.2f} / {tb:.2f} | "
                    f"{a:.2f} / {b:.2f} | {angle} | {err['psnr']:.1f} | {est.restarts} |")
    device = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} torch threads"
    # float32 GAN training is sensitive to the thread count: record it with the command.
    threads = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
    command = f"{threads}python benchmarks/kernel_recovery.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = [
        f"### KernelGAN kernel recovery ({args.preset} preset{''.join(', ' + a for a in args.kernelgan)}, {args.kernel_model} kernel model, {device}, {platform.machine()}, torch {torch.__version__})",
        "",
        f"Command: `{command}` ({len(members)} members in one batched call, {elapsed:.0f} s). "
        f"urban100 photos box-averaged by {args.box} first.",
        "",
        "| photo | kernel | seed | truth sigmas (px) | estimated sigmas (px) | est. angle (deg; truth 60) | kernel PSNR (dB) | restarts |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Wide estimated with the larger area than narrow in {sum(areas[p, 'wide', s] > areas[p, 'narrow', s] for p in photos for s in seeds)} "
        f"of {len(photos) * len(seeds)} (photo, seed) pairs; wide axis within 30 deg of the truth in {aligned} of {len(photos) * len(seeds)}.",
    ]
    section = f"kernel-recovery-{args.preset}-{args.kernel_model}" + ("-" + "-".join(args.kernelgan) if args.kernelgan else "")
    publish("\n".join(lines), args.results, section)


if __name__ == "__main__":
    main()
