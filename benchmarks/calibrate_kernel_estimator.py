"""Fit KENet's moment calibration on held-aside training photos and write it into the weights card.

KENet's region kernel is the Gaussian with the windows' mean second moments, cov_xy measured on
windows rotated by 45 degrees (:func:`mkgan_engine.train.kenet.window_moments`). Measured so, the
diagonal moment comes out shrunk towards 0; the calibration (:class:`~mkgan_engine.train.kenet.Calibration`)
is the gain g with true cov_xy ~ g x measured cov_xy, fitted by least squares through the origin on
whole-image estimates of the photos that training holds aside (every 8th BSD68/Urban100 photo, :func:`kenet_data.held_aside`), each
degraded by ``--kernels`` random kernels of the training family (clean: blur, subsample by 2).
Set5 and Set14 are never read. Reproducible (``--seed``). A two-fold check (fit on half the
photos, score the other half) prints the mean kernel PSNR without and with the gain; the linear fits
of the trace and of var_x - var_y (left as measured) are recorded beside it.

    OMP_NUM_THREADS=2 python benchmarks/calibrate_kernel_estimator.py --kernels 20 --seed 0
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from mkgan_engine.imageio import write_bytes_atomic
from mkgan_engine.train.config import KENetEstimatorConfig
from mkgan_engine.train.degradation import degrade
from mkgan_engine.train.kenet import WEIGHTS_FILE, Calibration, _gaussian_from_moments, estimate_region_kernels, load_kenet
from mkgan_engine.train.kenet_data import DegradationConfig, held_aside, load_training_images, random_training_kernel
from mkgan_engine.train.kernel import kernel_covariance, kernel_error

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "images"


def fit_calibration(measured: np.ndarray, truth: np.ndarray) -> Calibration:
    """The cov_xy gain by least squares through the origin on (N, 3) measured / true (var_x, var_y, cov_xy)."""
    gain = (measured[:, 2] * truth[:, 2]).sum() / max((measured[:, 2] ** 2).sum(), 1e-12)
    return Calibration(cov_xy_gain=round(float(gain), 3))


def linear_fit(measured: np.ndarray, truth: np.ndarray) -> list[float]:
    """[slope, intercept] of truth on measured, for the record of the moments left as measured."""
    return [round(float(v), 3) for v in np.polyfit(measured, truth, 1)]


def mean_psnr(cases: list[dict], calibration: Calibration) -> float:
    """Mean kernel PSNR (dB) of the Gaussians of the cases' measured moments, calibrated."""
    return float(np.mean([kernel_error(_gaussian_from_moments(calibration.apply(c["measured"])[0], c["truth"].shape[0]),
                                       c["truth"])["psnr"] for c in cases]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kernels", type=int, default=20, help="random kernels per held-aside photo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", type=Path, default=SHARED)
    parser.add_argument("--weights", type=Path, default=WEIGHTS_FILE, help="the card next to it is updated")
    parser.add_argument("--dry-run", action="store_true", help="print the fit, leave the card as it is")
    args = parser.parse_args(argv)
    from rich.progress import track

    t0 = time.perf_counter()
    model = load_kenet(args.weights)
    model.calibration = Calibration()  # measure the raw moments
    _, held = held_aside(load_training_images(args.images))
    rng = np.random.default_rng([args.seed, 3])
    family = DegradationConfig()
    cases = []
    for index in track(range(len(held) * args.kernels), description="held-aside estimates"):
        photo = held[index // args.kernels]
        hr = photo[: photo.shape[0] // 2 * 2, : photo.shape[1] // 2 * 2, None]
        truth = random_training_kernel(rng, family)
        lr = degrade(hr, truth, 2)[..., 0]
        estimate = estimate_region_kernels(lr, [None], KENetEstimatorConfig(), model)[0]
        cases.append({"photo": index // args.kernels, "truth": truth, "measured": estimate.moments,
                      "true_moments": kernel_covariance(truth)})

    def moments(of: list[dict], key: str) -> np.ndarray:
        return np.array([c[key] for c in of], np.float64)

    folds = [[c for c in cases if c["photo"] % 2 == f] for f in (0, 1)]
    check = []
    for fit_on, score_on in ((folds[0], folds[1]), (folds[1], folds[0])):
        fitted = fit_calibration(moments(fit_on, "measured"), moments(fit_on, "true_moments"))
        check.append({"fitted": asdict(fitted), "cases": len(score_on),
                      "psnr_raw_db": round(mean_psnr(score_on, Calibration()), 2),
                      "psnr_calibrated_db": round(mean_psnr(score_on, fitted), 2)})
    measured, truth = moments(cases, "measured"), moments(cases, "true_moments")
    calibration = fit_calibration(measured, truth)
    record = {
        **asdict(calibration),
        "trace_fit": linear_fit(measured[:, 0] + measured[:, 1], truth[:, 0] + truth[:, 1]),
        "var_x_minus_var_y_fit": linear_fit(measured[:, 0] - measured[:, 1], truth[:, 0] - truth[:, 1]),
        "fitted_on": f"{len(held)} held-aside BSD68/Urban100 photos x {args.kernels} random kernels of the "
                     f"training family (clean), whole-image estimates",
        "two_fold_check": check,
        "command": "python benchmarks/calibrate_kernel_estimator.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "time_s": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(record, indent=2))
    if not args.dry_run:
        card_path = args.weights.with_suffix(".json")
        card = json.loads(card_path.read_text())
        card["calibration"] = record
        write_bytes_atomic(card_path, (json.dumps(card, indent=2) + "\n").encode())
        print(f"wrote the calibration into {card_path}")


if __name__ == "__main__":
    main()
