"""What ZSSR inference settings cost and buy: self-ensemble size and back-projection, one training.

For every image of a degrade.py dataset and every seed, the default pipeline (the engine's masker
and kernel estimator) gives regions and kernels; ZSSR trains once per image and seed
(:func:`train_on_image`, the engine's first step) and then runs with every inference variant: the
median over 8, 4, 2 or 1 flips/rotations, each with and without the 2 back-projection iterations,
merged as the engine merges. So the variants differ only in inference, not in training noise.
Writes OUT/rows.csv (one row per image, seed, variant) and a table (mean over images per seed,
then mean +- std over seeds; seconds of inference per LR megapixel per region).

    python benchmarks/inference_settings.py --data benchmarks/data/S_x2_medium --seeds 0,1 \\
        --out benchmarks/runs/inference_S --results benchmarks/RESULTS.md --section inference-settings
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from mkgan_engine.config import EngineConfig
from mkgan_engine.metrics import score
from mkgan_engine.pipeline import Engine
from mkgan_engine.train.zssr import align_kernels, train_on_image
from mkgan_engine.train.zssr_inference import back_project, upscale_window
from run import Sample

ENSEMBLES = (8, 4, 2, 1)
BACK_PROJECTIONS = (2, 0)


def measure(sample: Sample, seed: int, base: EngineConfig) -> list[dict]:
    """Rows (variant, psnr_y, seconds) for one image and seed; one training, every variant."""
    engine = Engine(dataclasses.replace(base, seed=seed))
    plan = engine.prepare(sample.lr).plan
    kernels = [r.kernel for r in engine.estimate_kernels(sample.lr, plan)]
    config = engine.config.zssr
    lr = torch.from_numpy(np.ascontiguousarray(sample.lr.transpose(2, 0, 1)))[None]
    k = align_kernels(kernels)
    net, _, _ = train_on_image(lr, k, 2, config, list(plan.masks), list(plan.zssr_seeds))
    rows = []
    for ensemble in ENSEMBLES:
        start = time.perf_counter()
        raw = [upscale_window(net.select([i]), lr, k[i : i + 1], 2, config.with_(ensemble=ensemble, back_projection_iterations=0))
               for i in range(len(kernels))]
        net_seconds = time.perf_counter() - start
        for iterations in BACK_PROJECTIONS:
            start = time.perf_counter()
            outs = [back_project(sr, lr, k[i : i + 1], 2, iterations).clamp(0, 1)[0].numpy().transpose(1, 2, 0)
                    for i, sr in enumerate(raw)]
            seconds = net_seconds + time.perf_counter() - start
            sr = plan.merge(outs)
            rows.append({"image": sample.name, "seed": seed, "ensemble": ensemble, "back_projection": iterations,
                         "regions": len(kernels), "psnr_y": round(score(sr, sample.hr, 2)["psnr_y"], 4),
                         "s_per_mp_region": round(seconds / len(kernels) / (sample.lr.shape[0] * sample.lr.shape[1] / 1e6), 2)})
    return rows


def table(rows: list[dict]) -> str:
    seeds = sorted({r["seed"] for r in rows})
    reference = {(r["image"], r["seed"]): r["psnr_y"] for r in rows if r["ensemble"] == 8 and r["back_projection"] == 2}
    lines = ["| ensemble | back-projection | Y-PSNR (dB) | vs 8 + BP 2 (dB) | inference s / LR MP / region |",
             "|---:|---:|---:|---:|---:|"]
    for ensemble in ENSEMBLES:
        for iterations in BACK_PROJECTIONS:
            mine = [r for r in rows if r["ensemble"] == ensemble and r["back_projection"] == iterations]
            per_seed = [np.mean([r["psnr_y"] for r in mine if r["seed"] == s]) for s in seeds]
            delta = [np.mean([r["psnr_y"] - reference[(r["image"], s)] for r in mine if r["seed"] == s]) for s in seeds]
            seconds = np.mean([r["s_per_mp_region"] for r in mine])
            lines.append(f"| {ensemble} | {iterations} | {np.mean(per_seed):.3f} +- {np.std(per_seed):.3f} | "
                         f"{np.mean(delta):+.3f} +- {np.std(delta):.3f} | {seconds:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--results", type=Path, default=None)
    parser.add_argument("--section", default="inference-settings")
    args = parser.parse_args()
    meta = json.loads((args.data / "meta.json").read_text())
    protocol, names = meta["protocol"], sorted(meta["images"])[: args.limit]
    seeds = [int(s) for s in args.seeds.split(",")]
    base = EngineConfig(device="cpu")
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    start = time.perf_counter()
    for name in names:
        sample = Sample(args.data, name, protocol)
        for seed in seeds:
            rows.extend(measure(sample, seed, base))
            print(f"{name} seed {seed}: " + ", ".join(f"e{r['ensemble']}/bp{r['back_projection']} {r['psnr_y']:.2f}"
                                                       for r in rows[-len(ENSEMBLES) * len(BACK_PROJECTIONS):]), flush=True)
    with open(args.out / "rows.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    text = table(rows)
    command = (f"python benchmarks/inference_settings.py --data {args.data} --seeds {args.seeds}"
               + (f" --limit {args.limit}" if args.limit else "") + f" --out {args.out}")
    header = (f"## {args.section}\n\n`{command}`\n\n{len(names)} images x {len(seeds)} seeds, defaults (fast preset, "
              f"{base.kernel_estimator}, masker {base.masker.resolved_name()}); {platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} cores, torch threads {torch.get_num_threads()}, {time.perf_counter() - start:.0f} s in all.\n\n")
    print(header + text)
    if args.results:
        with open(args.results, "a") as f:
            f.write("\n" + header + text + "\n")


if __name__ == "__main__":
    main()
