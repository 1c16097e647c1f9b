"""Shared fixtures: real photos from ../shared/data/images (or the bundled samples/)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_IMAGES = REPO.parent / "shared" / "data" / "images"
SAMPLES = REPO / "samples"

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "0")
os.environ.setdefault("YOLO_CONFIG_DIR", str(REPO / ".yolo"))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def photo_path(name: str) -> Path:
    """A benchmark photo by relative name (e.g. "set14/baboon.png"); falls back to samples/."""
    for root in (SHARED_IMAGES, SAMPLES):
        p = root / name
        if p.exists():
            return p
    pytest.skip(f"photo {name} not found in {SHARED_IMAGES} or {SAMPLES}")


@pytest.fixture
def load_photo():
    """load_photo(name) -> float32 HxWx3 RGB in [0, 1]."""
    from mkgan_engine.imageio import read_image

    return lambda name: read_image(photo_path(name)).rgb


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def pytest_collection_modifyitems(config, items):
    """Skip tests marked gpu when CUDA is not available (they run on the GPU machine)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
