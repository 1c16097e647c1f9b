"""Device selection."""

from __future__ import annotations

import torch


class DeviceError(ValueError):
    """A device that cannot be used here; the message starts with the device's name and says why."""


def resolve_device(name: str = "auto") -> torch.device:
    """"auto" -> the first CUDA device when available, else CPU; "cpu", "cuda", "cuda:1" as given.

    Raises :class:`DeviceError` when CUDA is asked for but not usable.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"{name}: CUDA is not available (torch {torch.__version__})")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"{name}: only {torch.cuda.device_count()} CUDA device(s)")
    return device
