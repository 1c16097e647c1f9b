"""Make benchmark datasets under protocol U (one kernel per image) or S (spatially varying).

Protocol U (DIV2KRK-style): per image one anisotropic Gaussian (11x11 at x2, variances
lambda_1,2 ~ U(0.35, 5.0), theta ~ U(0, pi), multiplicative tap noise 1 + U(-0.4, 0.4), centred at
the sf-aligned centre, normalised); blur by correlation, subsample. x4 kernel = analytic(k2).
Protocol S: an elliptical object mask per image; a sharp kernel inside (lambda ~ U(0.35, 1.5)) and a
wide one outside (lambda ~ U(2.5, 5.0)), or the reverse (chosen per image); the two blurred HR
images are blended with the mask, then subsampled. Ground truth: both kernels and the LR mask.

Writes OUT/{lr,hr,kernels,masks}/ and OUT/meta.json (seed, parameters per image).

    python benchmarks/degrade.py --protocol U --sets set5,set14 --scale 2 --seed 0 --out benchmarks/data/U_x2
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


def make_one(hr: np.ndarray, protocol: str, scale: int, rng: np.random.Generator) -> dict:
    """Returns {"lr", "kernels": {name: k}, "mask_lr" (S only), "params"}."""
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
    parser.add_argument("--protocol", choices=["U", "S"], required=True)
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
            made = make_one(hr, args.protocol, args.scale, rng)
            like = LoadedImage(hr)
            write_image(args.out / "hr" / f"{name}.png", encode_like(hr, like))
            write_image(args.out / "lr" / f"{name}.png", encode_like(made["lr"], like))
            for kname, k in made["kernels"].items():
                save_kernel(args.out / "kernels" / f"{name}_{kname}.mat", k)
            if "mask_lr" in made:
                write_image(args.out / "masks" / f"{name}.png", made["mask_lr"].astype(np.uint8) * 255)
            meta["images"][name] = {"source": str(path.relative_to(args.images)), **made["params"]}
            print(f"{name}: HR {hr.shape[1]}x{hr.shape[0]} -> LR {made['lr'].shape[1]}x{made['lr'].shape[0]}")
    (args.out / "meta.json").write_text(json.dumps(meta, indent=2))


if __name__ == "__main__":
    main()
