"""How time and memory grow with the photo: `mkgan-engine sr` end to end on LR photos of 256x256,
512x512, 1000x700 and 2000x1400 px (defaults: fast preset, blur masker, KENet, CPU).

The photos are real texture: crops of Urban100 images (``../shared/data/images/urban100``), the
2000x1400 one a 2x2 mosaic of four 1000x700 crops (it is a timing input, not a quality one). Each
size runs in its own process (peak RSS of that process alone, from ``os.wait4``); stage seconds come
from its report. ``--untiled`` also runs the sizes up to 512 px with one tile (``--tile 4096``) and
reports the Y-PSNR of the tiled SR against the untiled one (inf = identical pixels).

    python benchmarks/large_photo.py --out benchmarks/runs/large_photo --untiled \\
        --results benchmarks/RESULTS.md --section large-photo
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

SIZES = ((256, 256), (512, 512), (1000, 700), (2000, 1400))  # (width, height), LR px
URBAN = Path(__file__).resolve().parents[2] / "shared" / "data" / "images" / "urban100"
MOSAIC = ("img_073.png", "img_009.png", "img_081.png", "img_017.png")


def make_photo(size: tuple[int, int], out: Path) -> Path:
    """An LR photo of ``size`` (width, height) from Urban100 crops; written once to ``out``."""
    path = out / f"photo_{size[0]}x{size[1]}.png"
    if path.exists():
        return path
    tiles = [Image.open(URBAN / name).convert("RGB") for name in MOSAIC]
    w, h = size
    if w <= tiles[0].width and h <= tiles[0].height:
        photo = tiles[0].crop((0, 0, w, h))
    else:
        photo = Image.new("RGB", size)
        for i, tile in enumerate(tiles):
            photo.paste(tile.crop((0, 0, w // 2, h // 2)), ((i % 2) * (w // 2), (i // 2) * (h // 2)))
    photo.save(path)
    return path


def run_once(photo: Path, out: Path, extra: list[str]) -> dict:
    """`mkgan-engine sr photo -o out` in a child process: wall seconds, peak RSS, report entry."""
    command = [sys.executable, "-m", "mkgan_engine.cli", "sr", str(photo), "-o", str(out), "--device", "cpu",
               "--save", "none", "--report", "json", "-q", *extra]
    start = time.perf_counter()
    child = subprocess.Popen(command)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {os.waitstatus_to_exitcode(status)}")
    entry = json.loads((out / "report.json").read_text())["images"][0]
    return {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024, "entry": entry}


def y_psnr(a: Path, b: Path) -> float:
    from mkgan_engine.imageio import read_image
    from mkgan_engine.metrics import psnr

    return psnr(read_image(a).rgb, read_image(b).rgb, shave=0, y=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--sizes", default=",".join(f"{w}x{h}" for w, h in SIZES))
    parser.add_argument("--untiled", action="store_true", help="also one tile for sizes up to 512 px: tiled vs untiled Y-PSNR")
    parser.add_argument("--results", type=Path, default=None)
    parser.add_argument("--section", default="large-photo")
    parser.add_argument("extra", nargs="*", help="more `mkgan-engine sr` options (after --)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    lines = ["| LR size (px) | regions | mask (s) | kernels (s) | ZSSR (s) | merge + write (s) | wall (s) | s / LR MP | peak RSS (MB) | tiles (side px) | Y-PSNR tiled vs untiled (dB) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for size in sizes:
        photo = make_photo(size, args.out)
        run = run_once(photo, args.out / f"sr_{size[0]}x{size[1]}", args.extra)
        entry, timings = run["entry"], run["entry"]["timings_s"]
        tiles = sum(r["zssr"]["tiles"] for r in entry["regions"])
        tile_px = entry["regions"][0]["zssr"]["tile_px"]
        vs_untiled = ""
        if args.untiled and max(size) <= 512:
            one = run_once(photo, args.out / f"sr_{size[0]}x{size[1]}_untiled", [*args.extra, "--tile", "4096"])
            vs_untiled = f"{y_psnr(Path(entry['outputs']['sr']), Path(one['entry']['outputs']['sr'])):.1f}"
        megapixels = size[0] * size[1] / 1e6
        lines.append(f"| {size[0]}x{size[1]} | {len(entry['regions'])} | {timings.get('mask', 0):.1f} | {timings.get('kernels', 0):.1f} | "
                     f"{timings.get('zssr', 0):.1f} | {timings.get('merge', 0) + timings.get('write', 0):.1f} | {run['wall_s']:.0f} | "
                     f"{run['wall_s'] / megapixels:.0f} | {run['peak_rss_mb']:.0f} | {tiles} ({tile_px}) | {vs_untiled} |")
        print(lines[-1], flush=True)
    command = "python benchmarks/large_photo.py --out " + str(args.out) + (" --untiled" if args.untiled else "") + (
        f" --sizes {args.sizes}" if args.sizes != parser.get_default("sizes") else "") + (" -- " + " ".join(args.extra) if args.extra else "")
    header = (f"## {args.section}\n\n`{command}`\n\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
              f"torch threads default, one run per size (wall and RSS of the whole `mkgan-engine sr` process, start-up included).\n\n")
    text = header + "\n".join(lines)
    print(text)
    if args.results:
        with open(args.results, "a") as f:
            f.write("\n" + text + "\n")


if __name__ == "__main__":
    main()
