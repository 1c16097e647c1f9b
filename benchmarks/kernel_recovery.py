"""Kernel recovery: known x2 kernels on held-out photos, every estimator side by side.

Each photo (Set5/Set14: never seen by KENet's training) is degraded by each known kernel (blur by
correlation, subsample by 2) and, in the ``noisy`` variant, then given Gaussian noise (sigma 2/255)
and JPEG compression (quality 90). Estimators:

  kenet                  the shipped KENet with the engine's defaults (windows' moments averaged; deterministic)
  kenet-median           the same windows combined by the median of their second moments
  kenet-dihedral         also averaging each window's 8 flips/rotations (8x the work)
  kernelgan-deep-linear  KernelGAN, reference generator (one run per seed, all members in one batched call)
  kernelgan-gaussian     KernelGAN, gaussian kernel model
  hybrid                 KernelGAN's gaussian model started from the KENet kernel
  fixed-1.4              an isotropic Gaussian of sigma 1.4 px whatever the image: the floor

The summary gives per estimator and variant the mean kernel PSNR (:func:`kernel.kernel_error`), in
how many (photo, seed) pairs the wide kernel's estimate has a larger 1-sigma area than the narrow
one's, how many estimates of an elongated kernel have their axis within 20 deg of the truth, and
the estimation time per image; the details table lists every run.

    OMP_NUM_THREADS=2 python benchmarks/kernel_recovery.py --preset fast --seeds 0,1,2 --results benchmarks/RESULTS.md
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
from mkgan_engine.train.config import KENetEstimatorConfig, KernelGANConfig
from mkgan_engine.train.degradation import anisotropic_gaussian, degrade, noise_and_jpeg
from mkgan_engine.train.kenet import estimate_region_kernels, load_kenet
from mkgan_engine.train.kernel import kernel_error, kernel_moments
from mkgan_engine.train.kernelgan import estimate_kernels
from run import add_kernelgan_option, override_config, publish  # benchmarks/run.py: a script's folder is on sys.path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "images"
KERNELS = {  # name -> (lambda_1, lambda_2, theta) of anisotropic_gaussian, 13x13 at x2
    "wide": (4.0, 0.6, np.pi / 3),  # sigmas 2.00 / 0.77 px, major axis at 60 deg
    "medium": (2.25, 0.64, 3 * np.pi / 4),  # sigmas 1.50 / 0.80 px, major axis at 135 deg
    "narrow": (0.5, 0.5, 0.0),  # sigma 0.71 px
}
ELONGATED = ("wide", "medium")
ESTIMATORS = ("kenet", "kenet-median", "kenet-dihedral", "kernelgan-deep-linear", "kernelgan-gaussian", "hybrid", "fixed-1.4")
VARIANTS = {"clean": (0.0, None), "noisy": (2.0 / 255.0, 90)}  # name -> (noise std, JPEG quality)


def load_hr(name: str) -> np.ndarray:
    """float32 HxWx3 in [0, 1], cropped to even sides."""
    hr = read_image(SHARED / name).rgb
    return np.ascontiguousarray(hr[: hr.shape[0] // 2 * 2, : hr.shape[1] // 2 * 2], dtype=np.float32)


def angle_error(estimate_rad: float, truth_rad: float) -> float:
    """Smallest difference between two axis angles, in degrees in [0, 90]."""
    return abs((np.degrees(estimate_rad - truth_rad) + 90.0) % 180.0 - 90.0)


def make_cases(photos: list[str], variants: list[str]) -> list[dict]:
    """One case per (variant, photo, kernel): the LR image and the true kernel."""
    cases = []
    for photo in photos:
        hr = load_hr(photo)
        for kname, params in KERNELS.items():
            truth = anisotropic_gaussian(13, *params, 2)
            lr = degrade(hr, truth, 2)
            for variant in variants:
                noise, quality = VARIANTS[variant]
                rng = np.random.default_rng([len(cases), 7])
                image = lr if variant == "clean" else noise_and_jpeg(lr, rng, noise, quality)
                cases.append({"photo": photo, "kernel": kname, "variant": variant, "truth": truth, "lr": image,
                              "size": f"{lr.shape[1]}x{lr.shape[0]}"})
    return cases


def run_estimator(
    name: str, cases: list[dict], seeds: list[int], config: KernelGANConfig, device: str, kernelgan_variants: list[str],
    weights: Path | None = None,
) -> tuple[list[dict], float]:
    """Returns (one row per (case, seed): case keys + seed + estimate, seconds per image). KernelGAN
    based estimators run on the ``kernelgan_variants`` cases only (they cost minutes per image)."""
    t0 = time.perf_counter()
    if name == "fixed-1.4":
        k = anisotropic_gaussian(13, 1.96, 1.96, 0.0, 2)
        return [{**c, "seed": "-", "estimate": k} for c in cases], 0.0
    if name.startswith("kenet"):
        model = load_kenet(weights, device=device)
        kconfig = KENetEstimatorConfig(combine="median" if name == "kenet-median" else "mean", dihedral=name == "kenet-dihedral")
        rows = [{**c, "seed": "-", "estimate": estimate_region_kernels(c["lr"], [None], kconfig, model, device)[0].kernel} for c in cases]
        return rows, (time.perf_counter() - t0) / len(cases)
    cases = [c for c in cases if c["variant"] in kernelgan_variants]
    members = [(c, s) for c in cases for s in seeds]
    starts = None
    if name == "hybrid":
        model = load_kenet(weights, device=device)
        start_of = [estimate_region_kernels(c["lr"], [None], KENetEstimatorConfig(), model, device)[0].kernel for c in cases]
        starts = [start_of[cases.index(c)] for c, _ in members]
    model_name = "deep-linear" if name == "kernelgan-deep-linear" else "gaussian"
    estimates = estimate_kernels([c["lr"] for c, _ in members], None, config.with_(kernel_model=model_name),
                                 [s for _, s in members], device=device, start_kernels=starts)
    rows = [{**c, "seed": s, "estimate": e.kernel, "restarts": e.restarts} for (c, s), e in zip(members, estimates)]
    return rows, (time.perf_counter() - t0) / len(members)


def kenet_timing(weights: Path | None, device: str, repeats: int = 5) -> str:
    """Seconds for KENet on a 256x256 LR image (set14/man degraded by the wide kernel), one region and
    two halves, mean ± std over ``repeats`` runs after one warm-up."""
    model = load_kenet(weights, device=device)
    lr = degrade(load_hr("set14/man.png"), anisotropic_gaussian(13, *KERNELS["wide"], 2), 2)[:256, :256]
    left = np.zeros(lr.shape[:2], bool)
    left[:, :128] = True
    cells = []
    for masks in ([None], [left, ~left]):
        estimate_region_kernels(lr, masks, KENetEstimatorConfig(), model, device)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            estimate_region_kernels(lr, masks, KENetEstimatorConfig(), model, device)
            times.append(time.perf_counter() - t0)
        cells.append(f"{np.mean(times):.2f} ± {np.std(times):.2f} s")
    return (f"KENet kernel estimation time at 256x256 LR ({repeats} runs after a warm-up, default settings): "
            f"one region {cells[0]}, two regions {cells[1]}.")


def summarise(name: str, rows: list[dict], seconds: float) -> list[str]:
    """Summary lines (one per variant) and detail lines for one estimator."""
    summary, details = [], []
    for variant in sorted({r["variant"] for r in rows}):
        mine = [r for r in rows if r["variant"] == variant]
        psnrs, aligned, elongated, areas = [], 0, 0, {}
        for r in mine:
            a, b, theta = kernel_moments(r["estimate"])
            ta, tb, ttheta = kernel_moments(r["truth"])
            psnr = kernel_error(r["estimate"], r["truth"])["psnr"]
            psnrs.append(psnr)
            areas[r["photo"], r["kernel"], r["seed"]] = a * b
            off = angle_error(theta, ttheta) if r["kernel"] in ELONGATED else None
            if off is not None:
                elongated += 1
                aligned += off <= 20.0
            details.append(f"| {name} | {variant} | {r['photo']} ({r['size']} LR) | {r['kernel']} | {r['seed']} | "
                           f"{ta:.2f} / {tb:.2f} | {a:.2f} / {b:.2f} | {np.degrees(theta):.0f}"
                           f"{f' ({off:.0f} off)' if off is not None else ''} | {psnr:.1f} |")
        pairs = {(p, s) for p, _, s in areas}
        ordered = sum(areas[p, "wide", s] > areas[p, "narrow", s] for p, s in pairs)
        summary.append(f"| {name} | {variant} | {len(mine)} | {np.mean(psnrs):.2f} | {np.min(psnrs):.1f} - {np.max(psnrs):.1f} | "
                       f"{ordered} of {len(pairs)} | {aligned} of {elongated} | {seconds:.2f} |")
    return summary + ["DETAILS"] + details


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", default="set5/baby.png,set5/butterfly.png,set14/man.png,set14/zebra.png")
    parser.add_argument("--seeds", default="0,1,2", help="KernelGAN seeds (KENet is deterministic)")
    parser.add_argument("--preset", default="fast", choices=["fast", "paper"])
    parser.add_argument("--estimators", default=",".join(ESTIMATORS))
    parser.add_argument("--variants", default="clean,noisy")
    parser.add_argument("--kernelgan-variants", default="clean", help="variants the KernelGAN-based estimators run on")
    add_kernelgan_option(parser)
    parser.add_argument("--weights", type=Path, default=None, help="a KENet weights file (default: the shipped one)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--results", type=Path, default=None)
    parser.add_argument("--section", default="kernel-recovery")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    photos = [p for p in args.photos.split(",")]
    for photo in photos:
        if not photo.startswith(("set5/", "set14/")):
            raise SystemExit(f"{photo}: kernel recovery is measured on Set5/Set14 only (KENet trains on the other sets)")
    cases = make_cases(photos, args.variants.split(","))
    config = override_config(KernelGANConfig.preset(args.preset), args.kernelgan)

    summary, details, t_start = [], [], time.perf_counter()
    for name in args.estimators.split(","):
        rows, seconds = run_estimator(name, cases, seeds, config, args.device, args.kernelgan_variants.split(","), args.weights)
        lines = summarise(name, rows, seconds)
        cut = lines.index("DETAILS")
        summary += lines[:cut]
        details += lines[cut + 1 :]
        print("\n".join(lines[:cut]), flush=True)
    device = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} torch threads"
    threads = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
    command = f"{threads}python benchmarks/kernel_recovery.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = "\n".join([
        f"### Kernel recovery on Set5/Set14 ({args.preset} KernelGAN preset{''.join(', ' + a for a in args.kernelgan)}; {device}, {platform.machine()}, torch {torch.__version__})",
        "",
        f"Command: `{command}` ({(time.perf_counter() - t_start) / 60:.1f} min in all). Kernels: wide 2.00 / 0.77 px at 60 deg, "
        "medium 1.50 / 0.80 px at 135 deg, narrow 0.71 px; `noisy` adds noise sigma 2/255 and JPEG quality 90 to the LR image. "
        "KernelGAN rows: one run per seed (all runs counted); KENet and the fixed guess are deterministic.",
        "",
        "| estimator | variant | runs | mean kernel PSNR (dB) | range (dB) | wide wider than narrow | elongated axis within 20 deg | s / image |",
        "|---|---|---|---|---|---|---|---|",
        *summary,
        "",
        "<details><summary>Every run</summary>",
        "",
        "| estimator | variant | photo | kernel | seed | truth sigmas (px) | estimated sigmas (px) | est. angle (deg) | kernel PSNR (dB) |",
        "|---|---|---|---|---|---|---|---|---|",
        *details,
        "",
        "</details>",
        "",
        kenet_timing(args.weights, args.device),
    ])
    publish(text, args.results, args.section)


if __name__ == "__main__":
    main()
