"""Cross-image packing: images per hour of `mkgan-engine sr DIR --pack P` for P = 1 and 4, same run.

The same folder of LR photos (Set14 crops, defaults: blur masker, KENet, fast preset, x2) runs once
per pack size and repeat, alternating the pack sizes (1, 4, 1, 4, ...) so a change of machine load
hits both; each run is one `mkgan-engine sr` process (start-up included). Every run is counted:
the table gives the mean and spread of the wall time over the repeats, images per hour, and whether
the SR pixels of every image are identical to those of the first pack-1 run (packing promises the
same output).

    python benchmarks/packing.py --out benchmarks/runs/packing --repeats 2 \\
        --results benchmarks/RESULTS.md --section packing-cpu
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import publish  # noqa: E402

SET14 = Path(__file__).resolve().parents[2] / "shared" / "data" / "images" / "set14"
PHOTOS = ("barbara.png", "pepper.png", "zebra.png", "comic.png", "ppt3.png", "monarch.png", "bridge.png", "flowers.png")


def make_inputs(out: Path, count: int, side: int) -> Path:
    """``count`` LR photos: ``side`` x ``side`` centre crops of Set14 images, in ``out``/inputs."""
    folder = out / "inputs"
    folder.mkdir(parents=True, exist_ok=True)
    for name in PHOTOS[:count]:
        image = Image.open(SET14 / name).convert("RGB")
        left, top = max(0, (image.width - side) // 2), max(0, (image.height - side) // 2)
        image.crop((left, top, left + side, top + side)).save(folder / name)
    return folder


def run_once(inputs: Path, out: Path, pack: int, extra: list[str]) -> float:
    """Wall seconds of `mkgan-engine sr inputs -o out --pack pack` in a child process."""
    command = [sys.executable, "-m", "mkgan_engine.cli", "sr", str(inputs), "-o", str(out), "--device", "cpu",
               "--save", "none", "--report", "json", "-q", "--pack", str(pack), *extra]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - start


def same_pixels(a: Path, b: Path) -> bool:
    files = sorted(a.glob("*_x*.png"))
    return bool(files) and all(np.array_equal(np.asarray(Image.open(f)), np.asarray(Image.open(b / f.name))) for f in files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--side", type=int, default=192, help="LR side of each photo (px)")
    parser.add_argument("--packs", default="1,4")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--results", type=Path, default=None)
    parser.add_argument("--section", default="packing-cpu")
    parser.add_argument("extra", nargs="*", help="more `mkgan-engine sr` options (after --)")
    args = parser.parse_args()
    inputs = make_inputs(args.out, args.images, args.side)
    packs = [int(p) for p in args.packs.split(",")]
    walls: dict[int, list[float]] = {p: [] for p in packs}
    identical: dict[int, bool] = {p: True for p in packs}
    reference = args.out / f"sr_pack{packs[0]}_run0"
    for repeat in range(args.repeats):
        for pack in packs:
            out = args.out / f"sr_pack{pack}_run{repeat}"
            walls[pack].append(run_once(inputs, out, pack, args.extra))
            identical[pack] &= same_pixels(reference, out)
            print(f"pack {pack} run {repeat}: {walls[pack][-1]:.1f} s", flush=True)
    base = statistics.mean(walls[packs[0]])
    lines = ["| --pack | runs | wall (s), mean +- std | images / hour | vs pack 1 | SR identical to pack 1 |",
             "|---:|---:|---:|---:|---:|---|"]
    for pack in packs:
        mean = statistics.mean(walls[pack])
        spread = statistics.stdev(walls[pack]) if len(walls[pack]) > 1 else 0.0
        lines.append(f"| {pack} | {len(walls[pack])} | {mean:.1f} +- {spread:.1f} | {args.images * 3600 / mean:.0f} | "
                     f"{base / mean:.2f}x | {'yes' if identical[pack] else 'NO'} |")
    command = (f"python benchmarks/packing.py --out {args.out} --images {args.images} --side {args.side} --packs {args.packs} "
               f"--repeats {args.repeats}" + (" -- " + " ".join(args.extra) if args.extra else ""))
    header = (f"## {args.section}\n\n`{command}`\n\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
              f"{args.images} Set14 crops of {args.side}x{args.side} LR px, defaults (blur masker, KENet, fast preset, x2), "
              f"pack sizes alternating, every run counted (one `mkgan-engine sr` process each, start-up included).\n\n")
    publish(header + "\n".join(lines), args.results, args.section)


if __name__ == "__main__":
    main()
