"""Make benchmark datasets under protocol U (one kernel per image) or S (spatially varying).

Protocol U (DIV2KRK-style): per image one anisotropic Gaussian (11x11 at x2, variances
lambda_1,2 ~ U(0.35, 5.0), theta ~ U(0, pi), multiplicative tap noise 1 + U(-0.4, 0.4), centred at
the sf-aligned centre, normalised); blur by correlation, subsample. x4 kernel = analytic(k2).
Protocol S: an elliptical object mask per image; a sharp kernel inside (lambda ~ U(0.35, 1.5)) and a
wide one outside (lambda ~ U(2.5, 5.0)), or the reverse (chosen per image); the two blurred HR
images are blended with the mask, then subsampled. Ground truth: both kernels and the LR mask.

Protocol V (spatially varying blur that does not follow an object; after MANet's spatially variant
test modes), alternating per image: "nested" (even images) - three nested ellipses (outer ring = the
image, a middle ring, a core) with a sharp (lambda ~ U(0.35, 1.2)), a medium (U(1.5, 2.5)) and a wide
(U(3.2, 5.0)) kernel in random order; "smooth" (odd images) - an isotropic kernel whose variance runs
linearly from top to bottom between U(0.35, 1.0) and U(3.5, 5.0) (direction random), blended from
nine kernel levels per HR row (blur is linear, so blending blurred images = blurring with the blended
kernel). Ground truth: for "nested" the label map (0 outer, 1 middle, 2 core) and its three kernels;
for "smooth" the per-row kernel is in meta.json, and the mask/kernels written are three horizontal
bands with each band's middle-row kernel (the 3-region upper bound, approximate within a band).

Writes OUT/{lr,hr,kernels,masks}/ and OUT/meta.json (seed, parameters per image). Kernel files:
``<name>_kernel.mat`` (U), ``<name>_{inside,outside}.mat`` (S), ``<name>_label<i>.mat`` (V); masks
are 0/255 (S) or the label ids 0, 1, 2 (V).

    python benchmarks/degrade.py --protocol U --sets set5,set14 --scale 2 --seed 0 --out benchmarks/data/U_x2
    python benchmarks/degrade.py --protocol V --sets set5,set14 --limit 4 --max-side 512 --seed 0 --out benchmarks/data/V_x2_medium
"""

from __future__ import annotations

import argparse
import json
import math
import zlib
from pathlib import Path

import numpy as np

from mkgan_engine.imageio import LoadedImage, encode_like, read_image, write_image
from mkgan_engine.train.degradation import degrade, random_kernel
from mkgan_engine.train.kernel import analytic_x4, save_kernel

SHARED_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "images"


def ellipse_mask(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """bool HxW ellipse covering roughly 20-45% of the image, at a random position and angle."""
    h, w = shape
    area = rng.uniform(0.2, 0.45) * h * w
    aspect = rng.uniform(0.6, 1.6)
    a = math.sqrt(area / math.pi * aspect)
    b = area / (math.pi * a)
    a, b = min(a, 0.45 * w), min(b, 0.45 * h)
    cy, cx = rng.uniform(0.35, 0.65) * h, rng.uniform(0.35, 0.65) * w
    angle = rng.uniform(0, math.pi)
    rows, cols = np.indices(shape, dtype=np.float64)
    y, x = rows - cy, cols - cx
    u = x * math.cos(angle) + y * math.sin(angle)
    v = -x * math.sin(angle) + y * math.cos(angle)
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0


def kernel_for_scale(k2: np.ndarray, scale: int) -> np.ndarray:
    return k2 if scale == 2 else analytic_x4(k2)


def crop_to_multiple(image: np.ndarray, scale: int, max_side: int | None) -> np.ndarray:
    """Centre-crop to at most max_side and to a multiple of the scale."""
    h, w = image.shape[:2]
    if max_side:
        h, w = min(h, max_side), min(w, max_side)
    h, w = h - h % scale, w - w % scale
    top, left = (image.shape[0] - h) // 2, (image.shape[1] - w) // 2
    return image[top : top + h, left : left + w]


def _nested_labels(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """int32 HxW: 0 outside, 1 in a middle ellipse (~55 % of the image), 2 in a core ellipse (~20 %)
    inside it, both at a random angle near the centre."""
    h, w = shape
    cy, cx = rng.uniform(0.42, 0.58) * h, rng.uniform(0.42, 0.58) * w
    angle = rng.uniform(0, math.pi)
    rows, cols = np.indices(shape, dtype=np.float64)
    u = (cols - cx) * math.cos(angle) + (rows - cy) * math.sin(angle)
    v = -(cols - cx) * math.sin(angle) + (rows - cy) * math.cos(angle)
    aspect = rng.uniform(0.75, 1.33)
    labels = np.zeros(shape, np.int32)
    for label, share in ((1, 0.55), (2, 0.2)):
        a = math.sqrt(share * h * w / math.pi * aspect)
        b = share * h * w / (math.pi * a)
        labels[(u / min(a, 0.48 * w)) ** 2 + (v / min(b, 0.48 * h)) ** 2 <= 1.0] = label
    return labels


def _make_v(hr: np.ndarray, index: int, scale: int, rng: np.random.Generator) -> dict:
    """Protocol V (see the module docstring): "nested" for even ``index``, "smooth" for odd."""
    from mkgan_engine.train.degradation import anisotropic_gaussian
    from mkgan_engine.train.kernel import shift_to_center

    h = hr.shape[0]
    if index % 2 == 0:
        ranges = [(0.35, 1.2), (1.5, 2.5), (3.2, 5.0)]
        order = rng.permutation(3)
        kernels, params = [], []
        for label in range(3):
            k, p = random_kernel(rng, size=11, scale=2, lambda_range=ranges[order[label]])
            kernels.append(kernel_for_scale(k, scale))
            params.append(p)
        labels_hr = _nested_labels(hr.shape[:2], rng)
        blurred = [degrade(hr, k, scale) for k in kernels]
        labels_lr = labels_hr[::scale, ::scale][: blurred[0].shape[0], : blurred[0].shape[1]]
        lr = np.choose(labels_lr[..., None], blurred).astype(np.float32)
        return {"lr": lr, "kernels": {f"label{i}": k for i, k in enumerate(kernels)}, "mask_lr": labels_lr,
                "params": {"mode": "nested", "labels": params}}
    top, bottom = rng.uniform(0.35, 1.0), rng.uniform(3.5, 5.0)
    if rng.uniform() < 0.5:
        top, bottom = bottom, top
    levels = np.linspace(top, bottom, 9)

    def level_kernel(variance: float) -> np.ndarray:
        return kernel_for_scale(shift_to_center(anisotropic_gaussian(11, variance, variance, 0.0, 2), 2), scale)

    blurred = np.stack([degrade(hr, level_kernel(v), scale) for v in levels])  # 9, h, w, c
    h_lr = blurred.shape[1]
    position = (np.arange(h_lr) * scale + (scale - 1) / 2) / max(h - 1, 1) * (len(levels) - 1)  # LR row -> level
    low = np.clip(np.floor(position).astype(int), 0, len(levels) - 2)
    frac = (position - low)[:, None, None]
    rows = np.arange(h_lr)
    lr = ((1 - frac) * blurred[low, rows] + frac * blurred[low + 1, rows]).astype(np.float32)
    bands = np.minimum(np.arange(h_lr) * 3 // h_lr, 2)
    labels_lr = np.repeat(bands[:, None], lr.shape[1], axis=1).astype(np.int32)
    band_variance = [float(np.interp((b + 0.5) / 3, [0, 1], [top, bottom])) for b in range(3)]
    return {"lr": lr, "kernels": {f"label{b}": level_kernel(v) for b, v in enumerate(band_variance)},
            "mask_lr": labels_lr, "params": {"mode": "smooth", "variance_top": float(top), "variance_bottom": float(bottom),
                                              "band_variances": band_variance}}


def make_one(hr: np.ndarray, protocol: str, scale: int, rng: np.random.Generator, index: int = 0) -> dict:
    """Returns {"lr", "kernels": {name: k}, "mask_lr" (S, V), "params"}; ``index`` picks V's mode."""
    if protocol == "V":
        return _make_v(hr, index, scale, rng)
    if protocol == "U":
        k2, params = random_kernel(rng, size=11, scale=2)
        kernel = kernel_for_scale(k2, scale)
        return {"lr": degrade(hr, kernel, scale), "kernels": {"kernel": kernel}, "params": params}
    sharp, p_sharp = random_kernel(rng, size=11, scale=2, lambda_range=(0.35, 1.5))
    wide, p_wide = random_kernel(rng, size=11, scale=2, lambda_range=(2.5, 5.0))
    object_sharp = bool(rng.uniform() < 0.5)
    inside, outside = (sharp, wide) if object_sharp else (wide, sharp)
    inside, outside = kernel_for_scale(inside, scale), kernel_for_scale(outside, scale)
    mask_hr = ellipse_mask(hr.shape[:2], rng)
    lr_in, lr_out = degrade(hr, inside, scale), degrade(hr, outside, scale)
    mask_lr = mask_hr[::scale, ::scale][: lr_in.shape[0], : lr_in.shape[1]]
    lr = np.where(mask_lr[..., None], lr_in, lr_out)
    params = {"object_sharp": object_sharp, "inside": p_sharp if object_sharp else p_wide,
              "outside": p_wide if object_sharp else p_sharp}
    return {"lr": lr, "kernels": {"inside": inside, "outside": outside}, "mask_lr": mask_lr, "params": params}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", choices=["U", "S", "V"], required=True)
    parser.add_argument("--sets", default="set5,set14", help="comma-separated folders of --images")
    parser.add_argument("--images", type=Path, default=SHARED_IMAGES)
    parser.add_argument("--scale", type=int, choices=[2, 4], default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=0, help="at most this many images per set (0 = all)")
    parser.add_argument("--max-side", type=int, default=0, help="centre-crop HR images to this side (0 = full)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    for sub in ("lr", "hr", "kernels", "masks"):
        (args.out / sub).mkdir(parents=True, exist_ok=True)
    meta = {"protocol": args.protocol, "scale": args.scale, "seed": args.seed, "images": {}}
    for set_name in args.sets.split(","):
        files = sorted((args.images / set_name).glob("*.png"))
        for index, path in enumerate(files[: args.limit or None]):
            name = f"{set_name}_{path.stem}"
            # One generator per image, derived from (seed, set, index): adding images never changes others.
            rng = np.random.default_rng([args.seed, zlib.crc32(set_name.encode()), index])
            hr = crop_to_multiple(read_image(path).rgb, args.scale, args.max_side or None)
            made = make_one(hr, args.protocol, args.scale, rng, index)
            like = LoadedImage(hr)
            write_image(args.out / "hr" / f"{name}.png", encode_like(hr, like))
            write_image(args.out / "lr" / f"{name}.png", encode_like(made["lr"], like))
            for kname, k in made["kernels"].items():
                save_kernel(args.out / "kernels" / f"{name}_{kname}.mat", k)
            if "mask_lr" in made:
                mask = made["mask_lr"]
                stored = mask.astype(np.uint8) * 255 if mask.dtype == bool else mask.astype(np.uint8)
                write_image(args.out / "masks" / f"{name}.png", stored)
            meta["images"][name] = {"source": str(path.relative_to(args.images)), **made["params"]}
            print(f"{name}: HR {hr.shape[1]}x{hr.shape[0]} -> LR {made['lr'].shape[1]}x{made['lr'].shape[0]}")
    (args.out / "meta.json").write_text(json.dumps(meta, indent=2))


if __name__ == "__main__":
    main()
