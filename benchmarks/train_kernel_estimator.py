"""Train KENet, the learned x2 kernel estimator, on synthetic degradations of BSD68 and Urban100.

Reproducible: one seed drives the data (numpy) and the initialisation (torch). Every 8th training
photo (sorted by name) is held aside; a fixed validation set of windows is made from those photos
once, and its mean kernel PSNR is printed during training. Set5 and Set14 are never read.

Writes the weights and their card (data, kernel family, network size, steps, time, scores,
sha256) - by default into the package (``train/weights/kenet_x2.pt`` + ``.json``) - and a small
fixed validation batch (``tests/data/kenet_val.npz``) whose score the card records, so a test can
check that the shipped weights reproduce it. Checkpoints go to ``--checkpoint`` every 250 steps;
rerunning the same command resumes from there.

    OMP_NUM_THREADS=2 python benchmarks/train_kernel_estimator.py --steps 11000 --seed 0
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from mkgan_engine.train.kenet import WEIGHTS_FILE, KENet, KENetConfig, save_weights, training_loss
from mkgan_engine.train.kenet_data import TRAIN_SETS, DegradationConfig, DegradationSampler, held_aside, load_training_images
from mkgan_engine.train.kernel import kernel_error

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "images"
VAL_BATCH = ROOT / "tests" / "data" / "kenet_val.npz"


def validation_psnr(model: KENet, windows: torch.Tensor, kernels: torch.Tensor) -> float:
    """Mean kernel PSNR (dB, :func:`kernel.kernel_error`) of the model's estimates on a fixed set."""
    with torch.inference_mode():
        estimates = torch.cat([model(w) for w in windows.split(64)]).numpy()
    return float(np.mean([kernel_error(e, t)["psnr"] for e, t in zip(estimates, kernels.numpy())]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=11000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam step, cosine-decayed to 1%% of it")
    parser.add_argument("--widths", default="16,32,64,128")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--moment-weight", type=float, default=0.3, help="weight of the second-moment term (0: the paper's loss alone)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-size", type=int, default=512)
    parser.add_argument("--val-every", type=int, default=500)
    parser.add_argument("--images", type=Path, default=SHARED)
    parser.add_argument("--out", type=Path, default=WEIGHTS_FILE)
    parser.add_argument("--val-batch-out", type=Path, default=VAL_BATCH)
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "runs" / "kenet_checkpoint.pt")
    args = parser.parse_args(argv)
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    torch.manual_seed(args.seed)
    net_config = KENetConfig(widths=tuple(int(w) for w in args.widths.split(",")), hidden=args.hidden)
    data_config = DegradationConfig(window=net_config.window, kernel_size=net_config.kernel_size)
    photos = load_training_images(args.images)
    train, held = held_aside(photos)
    val_windows, val_kernels = DegradationSampler(held, data_config, np.random.default_rng([args.seed, 1])).batch(args.val_size)
    sampler = DegradationSampler(train, data_config, np.random.default_rng([args.seed, 2]))

    model = KENet(net_config)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / 200) * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps))))
    step, elapsed, skipped, history = 0, 0.0, 0, []
    settings = {k: str(v) for k, v in vars(args).items() if k not in ("out", "val_batch_out", "checkpoint")}
    if args.checkpoint.exists():
        state = torch.load(args.checkpoint, weights_only=False)
        if state["settings"] != settings:
            sys.exit(f"{args.checkpoint} was written with other settings; delete it or rerun with those")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        sampler.rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        step, elapsed, skipped, history = state["step"], state["elapsed"], state["skipped"], state["history"]
        print(f"resumed from {args.checkpoint} at step {step}")

    columns = (TextColumn("KENet"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("loss {task.fields[loss]:.4f}  val {task.fields[val]}"), TimeElapsedColumn(), TimeRemainingColumn())
    model.train()
    with Progress(*columns) as progress:
        task = progress.add_task("train", total=args.steps, completed=step, loss=float("nan"), val="-")
        t0 = time.perf_counter() - elapsed
        while step < args.steps:
            windows, kernels = sampler.batch(args.batch)
            loss = training_loss(model(windows), kernels, args.moment_weight)
            if not torch.isfinite(loss):
                skipped += 1
                if skipped > 20:
                    sys.exit(f"loss not finite {skipped} times (last at step {step}); lower --lr")
                optimizer.zero_grad(set_to_none=True)
                continue
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            step += 1
            progress.update(task, completed=step, loss=loss.item())
            if step % args.val_every == 0 or step == args.steps:
                model.eval()
                score = validation_psnr(model, val_windows, val_kernels)
                model.train()
                history.append({"step": step, "val_kernel_psnr_db": round(score, 3), "loss": round(loss.item(), 5)})
                progress.update(task, val=f"{score:.2f} dB")
                progress.console.print(f"step {step}: loss {loss.item():.4f}, validation kernel PSNR {score:.2f} dB")
            if step % 250 == 0 or step == args.steps:
                args.checkpoint.parent.mkdir(parents=True, exist_ok=True)
                tmp = args.checkpoint.with_suffix(".tmp")
                torch.save({"settings": settings, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                            "schedule": schedule.state_dict(), "rng": sampler.rng.bit_generator.state,
                            "torch_rng": torch.get_rng_state(), "step": step, "elapsed": time.perf_counter() - t0,
                            "skipped": skipped, "history": history}, tmp)
                os.replace(tmp, args.checkpoint)
        elapsed = time.perf_counter() - t0

    model.eval()
    test_windows, test_kernels = val_windows[:64], val_kernels[:64]
    pixels = np.round(test_windows.numpy() * 255).astype(np.uint8)  # windows are 8-bit: stored exactly
    test_windows = torch.from_numpy(pixels.astype(np.float32) / 255.0)
    args.val_batch_out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.val_batch_out, windows=pixels, kernels=test_kernels.numpy())
    card = {
        "model": "KENet (scaled down), x2, 13x13 softmax kernel",
        "training_data": [f"{s} ({sum(1 for n, _ in photos if n.startswith(s + '/'))} photos, every 8th held aside for validation)" for s in TRAIN_SETS],
        "never_seen": ["set5", "set14"],
        "kernel_family": asdict(data_config),
        "loss": f"adaptive attention loss (thresholds 0.01 / 0.1, weights 0.01 / 0.1 / 1) + {args.moment_weight} x L1 of the second moments",
        "steps": step, "batch": args.batch, "lr": args.lr, "seed": args.seed, "skipped_steps": skipped,
        "train_time_s": round(elapsed, 1),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "command": "python benchmarks/train_kernel_estimator.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "val_kernel_psnr_db": round(validation_psnr(model, val_windows, val_kernels), 3),
        "val_windows": args.val_size,
        "test_batch": str(args.val_batch_out.relative_to(ROOT)) if args.val_batch_out.is_relative_to(ROOT) else str(args.val_batch_out),
        "test_batch_kernel_psnr_db": round(validation_psnr(model, test_windows, test_kernels), 4),
        "history": history,
    }
    card = save_weights(model, args.out, card)
    print(f"wrote {args.out} ({card['bytes'] / 1e6:.2f} MB, sha256 {card['sha256'][:12]}...): "
          f"validation kernel PSNR {card['val_kernel_psnr_db']:.2f} dB in {elapsed / 60:.1f} min")


if __name__ == "__main__":
    main()
