"""Mask quality of the weight-free maskers against the true blur regions, and the K they choose.

For every LR image of each dataset (made by ``benchmarks/degrade.py``) every masker is run as the
engine runs it (post-processing included). Where the dataset has a true mask (protocol S: the
object/background blur split; protocol V: a label map) the table gives, under the best matching of
the masker's labels to the true ones (every assignment of predicted labels to true labels is tried):

* ``obj_iou`` - IoU of the true object (every non-background true label, averaged over them),
* ``miou``    - mean over all true labels (background included),

and K, the number of regions the masker made. On protocol U (one kernel per image) only K is
meaningful: the best masker makes K = 1.

    python benchmarks/masker_quality.py --data benchmarks/data/S_x2_medium benchmarks/data/U_x2_medium \\
        benchmarks/data/V_x2_medium --maskers blur,blur-reblur,fft,edges,gradient
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np

from mkgan_engine.config import MaskerConfig
from mkgan_engine.imageio import read_image
from mkgan_engine.maskers import build_masker


def masker_config(name: str, max_regions: int, crop: int) -> MaskerConfig:
    """``blur-reblur`` = the blur masker with the weight-free map; other names as the CLI's. Regions must
    hold a ``crop``-px crop (the engine's rule: 48 = the fast preset's ZSSR crop with the KENet estimator)."""
    if name == "blur-reblur":
        return MaskerConfig(name="blur", blur_map="reblur", max_regions=max_regions, min_region_area=crop * crop)
    return MaskerConfig(name=name, max_regions=max_regions, min_region_area=crop * crop)  # type: ignore[arg-type]


def true_labels(data: Path, stem: str) -> np.ndarray | None:
    """int HxW true label map (0 = background) or None: masks/<stem>.png (S: 0/255, V: label ids)."""
    path = data / "masks" / f"{stem}.png"
    if not path.exists():
        return None
    from PIL import Image

    raw = np.asarray(Image.open(path))
    values = np.unique(raw)
    return np.searchsorted(values, raw).astype(np.int32)  # 0..n-1 in increasing order of the stored value


def matched_iou(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(object IoU, mean IoU) under the best assignment of predicted labels to true labels."""
    pred_ids, true_ids = np.unique(pred), np.unique(truth)
    best = (0.0, 0.0)
    for assignment in itertools.product(range(len(true_ids)), repeat=len(pred_ids)):
        mapped = np.asarray(assignment)[np.searchsorted(pred_ids, pred)]
        ious = []
        for t in range(len(true_ids)):
            a, b = mapped == t, truth == true_ids[t]
            union = np.count_nonzero(a | b)
            ious.append(np.count_nonzero(a & b) / union if union else 1.0)
        score = (float(np.mean(ious[1:])) if len(ious) > 1 else ious[0], float(np.mean(ious)))
        best = max(best, score, key=lambda s: s[1])
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, nargs="+", required=True)
    parser.add_argument("--maskers", default="blur,blur-reblur,fft,edges,gradient")
    parser.add_argument("--max-regions", type=int, default=3)
    parser.add_argument("--crop", type=int, default=48, help="the crop every region must hold (px)")
    parser.add_argument("--out", type=Path, help="write the per-image rows as JSON here")
    args = parser.parse_args(argv)

    rows = []
    for data in args.data:
        lrs = sorted((data / "lr").glob("*.png"))
        for name in args.maskers.split(","):
            masker = build_masker(masker_config(name, args.max_regions, args.crop))
            for lr in lrs:
                image = read_image(lr).rgb
                start = time.perf_counter()
                region_map = masker(image)
                seconds = time.perf_counter() - start
                truth = true_labels(data, lr.stem)
                obj, miou = matched_iou(region_map.labels, truth) if truth is not None else (float("nan"),) * 2
                rows.append({"data": data.name, "masker": name, "image": lr.stem, "k": len(region_map),
                             "obj_iou": obj, "miou": miou, "seconds": seconds,
                             "reason": region_map.fallback_reason})
                print(f"{data.name:14s} {name:12s} {lr.stem:18s} K={len(region_map)} obj {obj:.3f} miou {miou:.3f} "
                      f"{seconds:.2f}s", flush=True)

    print("\n| data | masker | mean obj IoU | mean mIoU | images with K=1 / 2 / 3+ | s / image |")
    print("|---|---|---|---|---|---|")
    for (data, name), group in itertools.groupby(rows, key=lambda r: (r["data"], r["masker"])):
        group = list(group)
        ks = [r["k"] for r in group]
        counts = f"{ks.count(1)} / {ks.count(2)} / {sum(k >= 3 for k in ks)}"
        obj = np.nanmean([r["obj_iou"] for r in group]) if not np.isnan(group[0]["obj_iou"]) else float("nan")
        miou = np.nanmean([r["miou"] for r in group]) if not np.isnan(group[0]["miou"]) else float("nan")
        fmt = (lambda v: "-" if np.isnan(v) else f"{v:.3f}")
        print(f"| {data} | {name} | {fmt(obj)} | {fmt(miou)} | {counts} | {np.mean([r['seconds'] for r in group]):.2f} |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
