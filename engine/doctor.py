"""``mkgan-engine doctor``: what can run on this machine, and whether the requested setup can."""

from __future__ import annotations

import importlib
import importlib.metadata
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Level = Literal["ok", "warn", "fail"]


@dataclass
class Check:
    """One line of the diagnosis. level "fail" means the requested setup cannot run."""

    name: str
    level: Level
    detail: str


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _onnxruntime_providers() -> tuple[list[str], list[str]]:
    """(available providers, providers that a real session actually got)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = min(model.ir_version, 9)
    available = ort.get_available_providers()
    wanted = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in available] + ["CPUExecutionProvider"]
    used: list[str] = []
    for provider in wanted:
        try:
            session = ort.InferenceSession(model.SerializeToString(), providers=[provider])
            used.extend(p for p in session.get_providers() if p == provider)
        except Exception:  # noqa: BLE001 - a provider that fails to load is simply not usable
            continue
    return available, used


def _kenet_check() -> Check:
    """The shipped KENet weights: present, sha256 as in their card, loadable (the default estimator)."""
    from mkgan_engine.train import kenet

    try:
        model = kenet.load_kenet(kenet.WEIGHTS_FILE)
        card = kenet.load_card(kenet.WEIGHTS_FILE)
    except kenet.WeightsError as error:
        return Check("KENet weights", "fail", str(error))
    return Check("KENet weights", "ok", f"{kenet.WEIGHTS_FILE.name} ({card['bytes'] / 1e6:.1f} MB, sha256 {card['sha256'][:12]}... "
                 f"verified; validation kernel PSNR {card['val_kernel_psnr_db']:.2f} dB; cov_xy gain {model.calibration.cov_xy_gain})")


def diagnose(
    device: str = "auto",
    backend: str = "torch",
    yolo_weights: Path | None = None,
    sam_checkpoint: Path | None = None,
    engines: Path | None = None,
) -> list[Check]:
    """Run every check; see :class:`Check`."""
    from mkgan_engine import __version__

    checks = [Check("mkgan-engine", "ok", f"{__version__} on Python {platform.python_version()} ({platform.machine()})")]

    import torch

    cuda = torch.cuda.is_available()
    gpu = f"{torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda}" if cuda else "no CUDA device"
    checks.append(Check("torch", "ok", f"{torch.__version__} ({gpu})"))
    try:
        from mkgan_engine.device import resolve_device

        checks.append(Check("device", "ok", f"--device {device} -> {resolve_device(device)}"))
    except ValueError as error:
        checks.append(Check("device", "fail", str(error)))

    try:
        from mkgan_engine.cpp_ext import masked_crop_status

        status = masked_crop_status(build=True)
        level: Level = "ok" if status.get("built") else "warn"
        checks.append(Check("masked-crop C++ ext", level, str(status.get("detail") or status)))
    except ImportError:
        checks.append(Check("masked-crop C++ ext", "warn", "status unavailable; the PyTorch fallback is used"))

    checks.append(_kenet_check())

    ort_version = _version("onnxruntime") or _version("onnxruntime-gpu")
    if ort_version is None:
        checks.append(Check("onnxruntime", "fail" if backend == "onnxruntime" else "warn", "not installed (pip install mkgan-engine[onnx])"))
    else:
        try:
            available, used = _onnxruntime_providers()
            checks.append(Check("onnxruntime", "ok", f"{ort_version}; usable providers: {', '.join(used) or 'none'} (listed: {', '.join(available)})"))
        except Exception as error:  # noqa: BLE001
            checks.append(Check("onnxruntime", "fail" if backend == "onnxruntime" else "warn", f"{ort_version} but a session failed: {error}"))

    trt_version = None
    try:
        trt_version = importlib.import_module("tensorrt").__version__
    except Exception:  # noqa: BLE001
        pass
    if trt_version:
        level = "ok" if cuda else ("fail" if backend == "tensorrt" else "warn")
        checks.append(Check("tensorrt", level, f"{trt_version}" + ("" if cuda else " (no CUDA device: engines cannot run)")))
    else:
        checks.append(Check("tensorrt", "fail" if backend == "tensorrt" else "warn",
                            "not installed (needs an NVIDIA machine: pip install mkgan-engine[gpu])"))

    for dist, extra in (("ultralytics", "yolo"), ("segment-anything", "sam")):
        v = _version(dist)
        checks.append(Check(dist, "ok" if v else "warn", v or f"not installed (pip install mkgan-engine[{extra}]; needed by the torch backend of yolo-sam)"))

    for option, path in (("--yolo-weights", yolo_weights), ("--sam-checkpoint", sam_checkpoint)):
        if path is not None:
            if Path(path).is_file():
                checks.append(Check(option, "ok", f"{path} ({Path(path).stat().st_size / 1e6:.1f} MB)"))
            else:
                checks.append(Check(option, "fail", f"{path}: no such file"))

    if engines is not None:
        try:
            from mkgan_engine.backends.manifest import describe_engines

            rows = describe_engines(Path(engines))
            if not rows:
                checks.append(Check("engines", "fail", f"{engines}: no exported artefacts"))
            for row in rows:
                checks.append(Check(f"engine {row['model']}/{row['format']}", "fail" if row.get("problem") else "ok",
                                    row.get("problem") or f"{row['file']} ({row['precision']}, {row['size_mb']} MB, "
                                    f"parity {row['parity']}, {row['built_with']})"))
        except (FileNotFoundError, ValueError) as error:
            checks.append(Check("engines", "fail", str(error)))
    return checks


def print_diagnosis(checks: list[Check]) -> bool:
    """Print a table; True when nothing failed."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="mkgan-engine doctor")
    table.add_column("check")
    table.add_column("status")
    table.add_column("detail", overflow="fold")
    colours = {"ok": "green", "warn": "yellow", "fail": "red"}
    for check in checks:
        table.add_row(escape(check.name), f"[{colours[check.level]}]{check.level}[/]", escape(check.detail))
    console = Console()
    console.print(table)
    failed = [c for c in checks if c.level == "fail"]
    console.print("the requested setup can run" if not failed else f"{len(failed)} check(s) failed: the requested setup cannot run")
    return not failed
