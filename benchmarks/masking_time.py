"""Masking time per image for each masker and YOLO/SAM backend; updates a RESULTS.md section.

Weight-free maskers run on real photos. YOLO+SAM runs with randomly initialised YOLOv8n / SAM vit_b
(no weights can be downloaded here): random YOLO detects nothing, so the detector and the SAM
encoder/decoder are timed directly through the backends (one box prompt), which is what a real
detection costs; the numbers are runtime costs, not mask quality.

    python benchmarks/masking_time.py --backends torch,onnxruntime --results benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from mkgan_engine.config import MaskerConfig
from mkgan_engine.imageio import read_image
from mkgan_engine.maskers import build_masker
from run import publish  # benchmarks/run.py: a script's folder is on sys.path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "images"
PHOTOS = ["set14/man.png", "set14/zebra.png", "bsd68/101085.png", "urban100/img_001.png"]


def timed(fn, repeats: int) -> tuple[float, float]:
    fn()  # warm-up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples), min(samples)


def random_weights(folder: Path) -> tuple[Path, Path]:
    """A random YOLOv8n .pt and a random SAM vit_b .pth (made once)."""
    folder.mkdir(parents=True, exist_ok=True)
    yolo, sam = folder / "yolov8n-random.pt", folder / "sam_vit_b-random.pth"
    if not yolo.exists():
        from ultralytics import YOLO

        YOLO("yolov8n.yaml").save(str(yolo))
    if not sam.exists():
        from segment_anything import sam_model_registry

        torch.save(sam_model_registry["vit_b"](checkpoint=None).state_dict(), sam)
    return yolo, sam


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="torch,onnxruntime", help="YOLO/SAM backends to time ('' = none)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("benchmarks/runs/masking"))
    parser.add_argument("--results", type=Path, default=None)
    parser.add_argument("--command", default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(args.work / "yolo"))

    rows: list[tuple[str, str, str, float, float]] = []
    images = [read_image(SHARED / p).rgb[::2, ::2].copy() for p in PHOTOS]  # LR-sized inputs
    for name in ("fft", "edges", "gradient"):
        masker = build_masker(MaskerConfig(name=name))  # type: ignore[arg-type]
        times = [timed(lambda im=im: masker(im), args.repeats) for im in images]
        sizes = ", ".join(f"{im.shape[1]}x{im.shape[0]}" for im in images)
        rows.append((name, "numpy", f"{len(images)} photos ({sizes})", float(np.mean([t[0] for t in times])), min(t[1] for t in times)))

    backends = [b for b in args.backends.split(",") if b]
    if backends:
        from mkgan_engine.backends.loader import load_backends
        from mkgan_engine.maskers.detection import letterbox
        from mkgan_engine.maskers.sam_processing import preprocess_image

        yolo, sam = random_weights(args.work / "weights")
        engines = args.work / "engines"
        if any(b != "torch" for b in backends) and not (engines / "manifest.json").exists():
            from mkgan_engine.export.exporter import ExportOptions, export_models

            export_models(ExportOptions(yolo, sam, "vit_b", ["onnx"], engines))
        image = images[0]
        for backend in backends:
            config = MaskerConfig(name="yolo-sam", backend=backend, yolo_weights=yolo, sam_checkpoint=sam,  # type: ignore[arg-type]
                                  engines_dir=engines if backend != "torch" else None, device=args.device)
            detector, encoder, decoder = load_backends(config)
            boxed = letterbox(image, detector.input_size)
            sam_in = preprocess_image(image)
            embeddings = encoder(sam_in.batch)
            box = sam_in.boxes_to_encoder(np.array([[10, 10, image.shape[1] - 10, image.shape[0] - 10]], np.float32))
            label = f"{detector.name} / {encoder.name}"
            for part, fn in (("detector (YOLOv8n, 640)", lambda: detector(boxed.batch)),
                             ("SAM vit_b encoder", lambda: encoder(sam_in.batch)),
                             ("SAM decoder, 1 box", lambda: decoder(embeddings, box))):
                median, best = timed(fn, args.repeats)
                rows.append((f"yolo-sam: {part}", backend, label, median, best))

    device = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"
    lines = [f"### Masking time per image ({device}, {platform.machine()}, torch {torch.__version__})", ""]
    if args.command:
        lines += [f"Command: `{args.command}`", ""]
    lines += ["| masker / model | backend | input | median (s) | best (s) |", "|---|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d:.3f} | {e:.3f} |" for a, b, c, d, e in rows]
    publish("\n".join(lines), args.results, f"masking-{args.device.split(':')[0]}")


if __name__ == "__main__":
    main()
