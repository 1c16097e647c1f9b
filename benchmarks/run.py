"""Run every method on a dataset made by degrade.py and write a CSV and a RESULTS.md table.

Methods (all through the library API):
  bicubic        bicubic interpolation
  zssr-bicubic   ZSSR with the bicubic x2 kernel (the classic non-blind baseline)
  kernelgan      KernelGAN + ZSSR, one kernel per image (masker "none")
  kenet          KENet + ZSSR, one kernel per image (masker "none")
  ours-<masker>  one kernel per region (--kernel-estimator) + ZSSR with a weight-free masker (blur, fft, edges,
                 gradient); ours-blur-k<K>: the blur masker with --max-regions K; ours-blur-reblur: its weight-free map
  ours-gtmask    the same with the ground-truth mask (protocols S and V)
  gt-kernels     ZSSR with the ground-truth kernel(s) and mask: the upper bound

Every (image, method, seed) is one row of OUT/runs.csv, written as soon as it is measured; the
table reports, per method, the mean over images for each seed, then the mean and standard deviation
over seeds (never a best-of-N), and the share of the gap between zssr-bicubic and gt-kernels that
the method closes. A rerun with the same OUT and settings (OUT/settings.json) resumes: rows already
in runs.csv are kept, not run again, so more seeds or methods can be added later and the table
covers them all.

    python benchmarks/run.py --data benchmarks/data/S_x2 --seeds 0,1,2 --preset fast --out benchmarks/runs/S_quick \
        --results benchmarks/RESULTS.md --section "S-quick"
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import os
import platform
import time
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from mkgan_engine.config import EngineConfig, MaskerConfig
from mkgan_engine.imageio import read_image, write_bytes_atomic
from mkgan_engine.metrics import score
from mkgan_engine.pipeline import Engine, Result
from mkgan_engine.regions import RegionInfo, RegionMap
from mkgan_engine.train.config import KERNEL_ESTIMATORS, KERNEL_MODELS, KernelGANConfig, ZSSRConfig
from mkgan_engine.train.degradation import resize_bicubic
from mkgan_engine.train.kernel import kernel_error, load_kernel

ALL_METHODS = ("bicubic", "zssr-bicubic", "kernelgan", "kenet", "ours-blur", "ours-fft", "ours-edges", "ours-gradient", "ours-gtmask",
               "gt-kernels")


def bicubic_kernel_x2(size: int = 13) -> np.ndarray:
    """The x2 bicubic (a = -0.5, antialiased) downscaling kernel as a size x size correlation kernel
    centred at the sf-aligned centre (size//2 + 0.5)."""
    def cubic(x: np.ndarray) -> np.ndarray:
        x = np.abs(x)
        return np.where(x <= 1, 1.5 * x**3 - 2.5 * x**2 + 1, np.where(x <= 2, -0.5 * x**3 + 2.5 * x**2 - 4 * x + 2, 0))

    centre = size // 2 + 0.5
    taps = cubic((np.arange(size) - centre) / 2.0)
    k = np.outer(taps, taps)
    return (k / k.sum()).astype(np.float32)


class Sample:
    """One image of a degrade.py dataset: LR, HR, true kernels, true mask (protocols S and V)."""

    def __init__(self, root: Path, name: str, protocol: str):
        self.name = name
        self.lr = read_image(root / "lr" / f"{name}.png").rgb
        self.hr = read_image(root / "hr" / f"{name}.png").rgb
        if protocol == "U":
            self.kernels = {0: load_kernel(root / "kernels" / f"{name}_kernel.mat")}
            self.truth_map = RegionMap.single(self.lr.shape[:2], source="truth")
        elif protocol == "V":
            from PIL import Image

            labels = np.asarray(Image.open(root / "masks" / f"{name}.png")).astype(np.int32)
            ids = [int(i) for i in np.unique(labels)]
            self.kernels = {i: load_kernel(root / "kernels" / f"{name}_label{i}.mat") for i in ids}
            self.truth_map = RegionMap(labels, [RegionInfo(i, f"label {i}", "truth") for i in ids])
        else:
            self.kernels = {0: load_kernel(root / "kernels" / f"{name}_outside.mat"),
                            1: load_kernel(root / "kernels" / f"{name}_inside.mat")}
            labels = (read_image(root / "masks" / f"{name}.png").rgb[..., 0] > 0.5).astype(np.int32)
            self.truth_map = RegionMap(labels, [RegionInfo(0, "background", "truth"), RegionInfo(1, "object", "truth")])

    def truth_kernel_for(self, region_mask: np.ndarray) -> np.ndarray:
        """The true kernel covering most of a region's pixels."""
        votes = {label: np.count_nonzero(region_mask & (self.truth_map.labels == label)) for label in self.kernels}
        return self.kernels[max(votes, key=votes.get)]


def method_masker(method: str) -> MaskerConfig:
    """The masker a method runs with: "none" for the one-kernel and given-mask methods, the named one for
    ours-<masker>; ours-blur-k<K> = blur with max_regions K, ours-blur-reblur = blur with the weight-free map."""
    if method in ("kernelgan", "kenet", "ours-gtmask", "zssr-bicubic", "gt-kernels"):
        return MaskerConfig(name="none")
    name = method.removeprefix("ours-")
    if name.startswith("blur-k"):
        return MaskerConfig(name="blur", max_regions=int(name.removeprefix("blur-k")))
    if name == "blur-reblur":
        return MaskerConfig(name="blur", blur_map="reblur")
    return MaskerConfig(name=name)  # type: ignore[arg-type]


def run_method(method: str, sample: Sample, base: EngineConfig, seed: int) -> tuple[np.ndarray, Result | None]:
    """Returns (SR image float32 HxWx3 in [0,1], the engine Result or None for bicubic)."""
    if method == "bicubic":
        x = torch.from_numpy(np.ascontiguousarray(sample.lr.transpose(2, 0, 1)))[None]
        return np.clip(resize_bicubic(x, float(base.scale))[0].numpy().transpose(1, 2, 0), 0, 1), None
    config = EngineConfig(scale=base.scale, preset=base.preset, device=base.device, seed=seed,
                          kernel_estimator=method if method in ("kernelgan", "kenet") else base.kernel_estimator,  # type: ignore[arg-type]
                          masker=method_masker(method), kenet=base.kenet, kernelgan=base.kernelgan, zssr=base.zssr)
    engine = Engine(config)
    if method == "zssr-bicubic":
        result = engine.run(sample.lr, region_map=RegionMap.single(sample.lr.shape[:2], "none"), kernels=[bicubic_kernel_x2()])
    elif method == "gt-kernels":
        rmap = sample.truth_map
        result = engine.run(sample.lr, region_map=rmap, kernels=[sample.kernels[r.label] for r in rmap.regions])
    elif method == "ours-gtmask":
        result = engine.run(sample.lr, region_map=sample.truth_map)
    else:
        result = engine.run(sample.lr)
    return result.sr, result


def evaluate(method: str, sample: Sample, base: EngineConfig, seed: int) -> tuple[dict, np.ndarray, Result | None]:
    start = time.perf_counter()
    sr, result = run_method(method, sample, base, seed)
    row: dict = {"image": sample.name, "method": method, "seed": seed, "wall_s": round(time.perf_counter() - start, 2)}
    row.update({k: round(v, 5) for k, v in score(sr, sample.hr, base.scale).items()})
    if result is not None:
        row["regions"] = len(result.regions)
        row.update({f"t_{k}": round(v, 2) for k, v in result.timings.items()})
        if method not in ("zssr-bicubic", "gt-kernels"):
            errors = [kernel_error(r.kernel, sample.truth_kernel_for(result.region_map.mask(r.label))) for r in result.regions]
            row["kernel_l1"] = round(float(np.mean([e["l1"] for e in errors])), 4)
            row["kernel_psnr"] = round(float(np.mean([e["psnr"] for e in errors])), 3)
    return row, sr, result


def summarise(rows: list[dict], methods: list[str]) -> list[dict]:
    """Per method: mean over images per seed, then mean/std over seeds; gap closed vs the baselines."""
    table = []
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        if not mine:
            continue
        seeds = sorted({r["seed"] for r in mine})
        entry: dict = {"method": method, "seeds": len(seeds), "images": len({r["image"] for r in mine})}
        for key in ("psnr_y", "ssim_y", "psnr_rgb", "mse", "kernel_l1", "kernel_psnr", "wall_s"):
            per_seed = [np.mean([r[key] for r in mine if r["seed"] == s and r.get(key) not in (None, "")]) for s in seeds
                        if any(r.get(key) not in (None, "") for r in mine if r["seed"] == s)]
            if per_seed:
                entry[key] = (float(np.mean(per_seed)), float(np.std(per_seed)))
        table.append(entry)
    by = {e["method"]: e for e in table}
    if "zssr-bicubic" in by and "gt-kernels" in by:
        low, high = by["zssr-bicubic"]["psnr_y"][0], by["gt-kernels"]["psnr_y"][0]
        for e in table:
            e["gap_closed"] = (e["psnr_y"][0] - low) / (high - low) if abs(high - low) > 1e-6 else float("nan")
    return table


def markdown(table: list[dict], header: str) -> str:
    lines = [header, "", "| method | Y-PSNR (dB) | Y-SSIM | RGB PSNR | MSE (x1e-3) | kernel L1 | kernel PSNR | gap closed | s / image |",
             "|---|---|---|---|---|---|---|---|---|"]

    def fmt(e: dict, key: str, digits: int, factor: float = 1.0) -> str:
        if key not in e:
            return "-"
        mean, std = e[key]
        return f"{mean * factor:.{digits}f} ± {std * factor:.{digits}f}"

    for e in table:
        gap = e.get("gap_closed")
        lines.append(f"| {e['method']} | {fmt(e, 'psnr_y', 2)} | {fmt(e, 'ssim_y', 4)} | {fmt(e, 'psnr_rgb', 2)} | "
                     f"{fmt(e, 'mse', 3, 1e3)} | {fmt(e, 'kernel_l1', 3)} | {fmt(e, 'kernel_psnr', 2)} | "
                     f"{'-' if gap is None else f'{gap:.0%}'} | {e['wall_s'][0]:.1f} |")
    return "\n".join(lines)


def per_image_markdown(rows: list[dict], methods: list[str], names: list[str]) -> str:
    """Y-PSNR (dB) per method (rows) and image (columns), mean over seeds; "-" where not measured."""
    short = [name.split("_", 1)[-1] for name in names]
    lines = ["Y-PSNR (dB) per image, mean over seeds:", "", "| method | " + " | ".join(short) + " |",
             "|---|" + "---|" * len(names)]
    for method in methods:
        cells = []
        for name in names:
            values = [r["psnr_y"] for r in rows if r["method"] == method and r["image"] == name]
            cells.append(f"{np.mean(values):.2f}" if values else "-")
        if any(c != "-" for c in cells):
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def update_results(path: Path, section: str, text: str) -> None:
    """Replace the block between <!-- BEGIN section --> and <!-- END section --> (append if absent)."""
    begin, end = f"<!-- BEGIN {section} -->", f"<!-- END {section} -->"
    current = path.read_text() if path.exists() else "# Benchmark results\n"
    block = f"{begin}\n{text}\n{end}"
    if begin in current and end in current:
        head, rest = current.split(begin, 1)
        current = head + block + rest.split(end, 1)[1]
    else:
        current = current.rstrip() + "\n\n" + block + "\n"
    path.write_text(current)


def add_override_option(parser: argparse.ArgumentParser, stage: str, example: str) -> None:
    """``--<stage> NAME=VALUE`` (repeatable): overrides of that stage's config, see :func:`override_config`."""
    parser.add_argument(f"--{stage}", action="append", default=[], metavar="NAME=VALUE",
                        help=f"override a {stage} config field (repeatable), e.g. {example}")


def add_kernelgan_option(parser: argparse.ArgumentParser) -> None:
    """``--kernelgan NAME=VALUE`` (repeatable): KernelGANConfig overrides."""
    add_override_option(parser, "kernelgan", "gaussian_lr=0.002")


Config = TypeVar("Config", KernelGANConfig, ZSSRConfig)


def override_config(config: Config, assignments: list[str]) -> Config:
    """``config`` with fields set from "name=value" strings (``--kernelgan``, ``--zssr``), each value
    parsed as the type of the field's current value (int, float, str; tuples are not supported)."""
    changes: dict[str, object] = {}
    for item in assignments:
        name, sep, value = item.partition("=")
        current = getattr(config, name) if sep and name in {f.name for f in dataclasses.fields(config)} else None
        if not isinstance(current, (int, float, str)) or isinstance(current, bool):
            raise SystemExit(f"{item!r}: expected NAME=VALUE with NAME a number or string field of {type(config).__name__}")
        try:
            changes[name] = type(current)(value)
        except ValueError:
            raise SystemExit(f"{item!r}: {value!r} is not a {type(current).__name__}") from None
    return config.with_(**changes)


def run_settings(args: argparse.Namespace, base: EngineConfig, meta: dict) -> dict:
    """What a row's numbers depend on besides (image, method, seed): rows measured under other
    settings must not be mixed into one table."""
    from mkgan_engine.train.kenet import WEIGHTS_FILE, card_calibration, load_card

    calibration = card_calibration(load_card(Path(base.kenet.weights) if base.kenet.weights else WEIGHTS_FILE))
    settings = {"data": str(args.data.resolve()), "data_seed": meta["seed"], "preset": args.preset,
                "kernel_estimator": base.kernel_estimator, "kenet": dataclasses.asdict(base.kenet),
                "kenet_calibration": dataclasses.asdict(calibration),
                "kernelgan": dataclasses.asdict(base.kernelgan), "zssr": dataclasses.asdict(base.zssr)}
    return json.loads(json.dumps(settings))  # tuples -> lists, as read back from the file


def _parse_cell(key: str, value: str) -> object:
    if key in ("image", "method"):
        return value
    number = float(value)
    return int(number) if key in ("seed", "regions") else number


def load_runs(out: Path, settings: dict) -> list[dict]:
    """The rows of an earlier run in ``out`` with the same settings ([] for a new folder); exits with a
    clear message when ``out`` holds runs made with other settings."""
    runs, saved = out / "runs.csv", out / "settings.json"
    if not runs.exists():
        return []
    if not saved.exists() or json.loads(saved.read_text()) != settings:
        raise SystemExit(f"{out} holds runs made with other settings (see {saved}); pass another --out")
    with open(runs, newline="") as f:
        return [{k: _parse_cell(k, v) for k, v in r.items() if v != ""} for r in csv.DictReader(f)]


def save_settings(out: Path, settings: dict) -> None:
    """Write settings.json (what the rows in runs.csv were measured under), atomically."""
    write_bytes_atomic(out / "settings.json", (json.dumps(settings, indent=1) + "\n").encode())


def save_runs(out: Path, rows: list[dict]) -> None:
    """Write runs.csv (one row per (image, method, seed)), atomically."""
    columns = sorted({k for r in rows for k in r}, key=lambda k: (k not in ("image", "method", "seed"), k))
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_bytes_atomic(out / "runs.csv", text.getvalue().encode())


def publish(text: str, results: Path | None, section: str | None) -> None:
    """Print a results block and, given a RESULTS.md path and a section, replace that section there."""
    print(text)
    if results and section:
        update_results(results, section, text)


def save_figure(out: Path, sample: Sample, srs: dict[str, np.ndarray], results: dict[str, Result | None], scale: int) -> None:
    """Side-by-side crops (bicubic | single kernel | ours | truth), kernels (estimated vs true), mask."""
    import cv2

    from mkgan_engine.preview import kernel_tile, overlay_regions

    h, w = sample.hr.shape[:2]
    size = min(h, w, 160)
    top, left = (h - size) // 2, (w - size) // 2
    names = [m for m in ("bicubic", "kernelgan", "ours-fft", "gt-kernels") if m in srs]
    crops = [srs[m][top : top + size, left : left + size] for m in names] + [sample.hr[top : top + size, left : left + size]]
    row = np.concatenate([np.pad(c, ((0, 0), (0, 4), (0, 0)), constant_values=1) for c in crops], axis=1)
    tiles = []
    for label in sorted(sample.kernels):
        tiles.append(kernel_tile(sample.kernels[label], 64))
    ours = results.get("ours-fft")
    if ours is not None:
        tiles += [kernel_tile(r.kernel, 64) for r in ours.regions]
        mask = overlay_regions(sample.lr, ours.region_map.labels)
    else:
        mask = sample.lr
    mask = cv2.resize(mask, (int(mask.shape[1] * size / mask.shape[0]), size))
    kernels = np.concatenate([np.pad(t, ((0, size - 64), (0, 4), (0, 0)), constant_values=1) for t in tiles], axis=1)
    picture = np.concatenate([row, mask, np.ones((size, 4, 3)), kernels], axis=1)
    out.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out / f"{sample.name}.png"), (np.clip(picture, 0, 1)[..., ::-1] * 255).round().astype(np.uint8))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a folder written by degrade.py")
    parser.add_argument("--methods", default=",".join(ALL_METHODS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--preset", choices=["fast", "paper"], default="fast")
    parser.add_argument("--kernel-model", choices=KERNEL_MODELS, default="deep-linear")
    parser.add_argument("--kernel-estimator", choices=KERNEL_ESTIMATORS, default="kenet", help="for the ours-* methods")
    add_kernelgan_option(parser)
    add_override_option(parser, "zssr", "region_share=0.5")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--limit", type=int, default=0, help="first N images only")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--figures", type=Path, default=None, help="write comparison figures (first seed) here")
    parser.add_argument("--results", type=Path, default=None, help="RESULTS.md to update")
    parser.add_argument("--section", default=None, help="section name in RESULTS.md")
    parser.add_argument("--command", default=None, help="the command line to record in RESULTS.md")
    args = parser.parse_args(argv)

    meta = json.loads((args.data / "meta.json").read_text())
    protocol, scale = meta["protocol"], meta["scale"]
    names = sorted(meta["images"])[: args.limit or None]
    methods = [m for m in args.methods.split(",") if not (m == "ours-gtmask" and protocol == "U")]
    seeds = [int(s) for s in args.seeds.split(",")]
    base = EngineConfig(scale=scale, preset=args.preset, device=args.device, kernel_estimator=args.kernel_estimator).resolved()  # type: ignore[arg-type]
    base = dataclasses.replace(base, kernelgan=override_config(base.kernelgan.with_(kernel_model=args.kernel_model), args.kernelgan),
                               zssr=override_config(base.zssr, args.zssr))
    args.out.mkdir(parents=True, exist_ok=True)
    settings = run_settings(args, base, meta)
    rows = [r for r in load_runs(args.out, settings) if r["image"] in names]
    save_settings(args.out, settings)
    done = {(r["image"], r["method"], r["seed"]) for r in rows}
    if done:
        print(f"resuming: {len(done)} runs already in {args.out / 'runs.csv'}", flush=True)
    for name in names:
        sample = Sample(args.data, name, protocol)
        for seed in seeds:
            srs, results = {}, {}
            for method in methods:
                if (name, method, seed) in done:
                    continue
                if method == "bicubic" and seed != seeds[0]:
                    row = dict(next(r for r in rows if r["image"] == name and r["method"] == "bicubic"), seed=seed)
                else:
                    row, srs[method], results[method] = evaluate(method, sample, base, seed)
                rows.append(row)
                save_runs(args.out, rows)
                print(json.dumps(row), flush=True)
            if args.figures and seed == seeds[0] and len(srs) == len(methods):
                save_figure(args.figures, sample, srs, results, scale)
    rows = [r for r in rows if r["method"] in methods and r["seed"] in seeds]
    table = summarise(rows, methods)
    on_gpu = torch.cuda.is_available() and base.device != "cpu"
    machine = f"{platform.machine()}, " + (torch.cuda.get_device_name(0) if on_gpu else f"CPU ({os.cpu_count()} cores)")
    overrides = f" ({', '.join(args.kernelgan + args.zssr)})" if args.kernelgan or args.zssr else ""
    header = (f"### Protocol {protocol}, x{scale}, {args.preset} preset, ours-* with {args.kernel_estimator}, "
              f"{args.kernel_model} kernel model{overrides}, "
              f"{len(names)} images x {len(seeds)} seeds "
              f"(seeds {args.seeds}; data seed {meta['seed']})\n\nMachine: {machine}; torch {torch.__version__}; "
              f"runs took {sum(r['wall_s'] for r in rows) / 60:.1f} min in all. "
              f"Mean ± std over seeds of the per-seed mean over images.")
    if args.command:
        header += f"\n\nCommand: `{args.command}`"
    text = markdown(table, header) + "\n\n" + per_image_markdown(rows, methods, names)
    (args.out / "summary.md").write_text(text + "\n")
    publish(text, args.results, args.section)


if __name__ == "__main__":
    main()
