"""Export (YOLOv8n + SAM vit_b with random weights) -> ONNX, parity of ONNX Runtime vs torch, the
manifest and its checks, the runtime loader, doctor, and the error paths (missing TensorRT, bad options).

Timings on a loaded single CPU core: the ONNX export of all three models runs once per module
(fixture ``onnx_dir``, ~2-2.5 min): YOLOv8n ~10 s, the SAM vit_b encoder ~1.5 min (export ~25-60 s,
then one eager torch and one ONNX Runtime forward at 1024x1024 for the parity check, ~40 s each),
the decoder ~15 s; peak RSS ~5 GB. Because a vit_b encoder forward costs ~40 s here, the encoder's
ONNX-vs-torch parity is the one the exporter measured (through the same ONNX Runtime wrapper the
backend uses) and recorded in the manifest; the detector and decoder are also re-checked here on
fresh inputs. AOTInductor on CPU compiles C++ (~50 s for the decoder): one test. TensorRT and CUDA
tests need an NVIDIA GPU (marked gpu, skipped here).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mkgan_engine.config import MaskerConfig
from mkgan_engine.backends.manifest import (
    MANIFEST_NAME,
    Artefact,
    Manifest,
    ManifestError,
    ManifestMismatch,
    TensorSpec,
    describe_engines,
    file_sha256,
    read_manifest,
    verify_artefact,
    write_manifest,
)
from mkgan_engine.export.parity import mask_iou

REPO = Path(__file__).resolve().parents[1]

try:
    import tensorrt  # noqa: F401

    HAVE_TRT = True
except ImportError:
    HAVE_TRT = False


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    """Random-init YOLOv8n (.pt, from ultralytics' yaml) and SAM vit_b (.pth state_dict), saved as users' files are."""
    pytest.importorskip("ultralytics")
    pytest.importorskip("segment_anything")
    from segment_anything import sam_model_registry
    from ultralytics import YOLO

    d = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    yolo_pt = d / "yolov8n_random.pt"
    YOLO("yolov8n.yaml").save(yolo_pt)
    sam_pth = d / "sam_vit_b_random.pth"
    torch.save(sam_model_registry["vit_b"](checkpoint=None).state_dict(), sam_pth)
    return {"yolo": yolo_pt, "sam": sam_pth}


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory, weights) -> Path:
    """All three models exported to ONNX once (the heavy step of this module)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from mkgan_engine.export.exporter import ExportOptions, export_models

    out = tmp_path_factory.mktemp("engines") / "onnx"
    export_models(ExportOptions(weights["yolo"], weights["sam"], "vit_b", ["onnx"], out))
    return out


@pytest.fixture(scope="module")
def torch_models(weights):
    """The eager torch backends on the same weights (the parity reference)."""
    from mkgan_engine.backends.torch_backend import load_torch_backends

    return load_torch_backends(weights["yolo"], weights["sam"], "vit_b", "cpu")


def _linked_copy(src: Path, dst: Path) -> Path:
    """A new engines dir whose model files are symlinks to ``src``'s (cheap copy to edit the manifest)."""
    dst.mkdir()
    for f in src.iterdir():
        if f.name != MANIFEST_NAME:
            (dst / f.name).symlink_to(f)
    (dst / MANIFEST_NAME).write_text((src / MANIFEST_NAME).read_text())
    return dst


# ------------------------------------------------------------------------------------ manifest
def test_manifest_written_and_read_back(onnx_dir, weights):
    m = read_manifest(onnx_dir)
    assert m.validate(onnx_dir) == []
    assert [(a.model, a.format) for a in m.artefacts] == [("yolo", "onnx"), ("sam_encoder", "onnx"), ("sam_decoder", "onnx")]
    yolo, enc, dec = m.artefacts
    assert yolo.source_sha256 == file_sha256(weights["yolo"])
    assert enc.source_sha256 == dec.source_sha256 == file_sha256(weights["sam"])
    assert all(a.opset == 18 and a.precision == "fp32" for a in m.artefacts)
    assert yolo.inputs == [TensorSpec("images", [1, 3, 640, 640], "float32")]
    assert yolo.outputs == [TensorSpec("output0", [1, 84, 8400], "float32")]
    assert enc.outputs[0].shape == [1, 256, 64, 64]
    assert [t.name for t in dec.inputs] == ["embeddings", "boxes"]
    assert dec.inputs[1].shape == ["num_boxes", 4]
    assert dec.outputs[0].shape == ["num_boxes", 1, 256, 256] and dec.outputs[1].shape == ["num_boxes", 1]
    for a in m.artefacts:
        assert a.tool_versions["torch"] and a.tool_versions["onnx"] and a.tool_versions["onnxruntime"]
        assert a.parity is not None and a.parity.passed, a.parity
        assert a.data_files == []  # < 2 GB: single-file ONNX
        print(f"{a.model}: export {a.export_seconds:.1f} s, peak RSS {a.extra['peak_rss_mb']:.0f} MB, "
              f"parity {a.parity.metric}={a.parity.value:.3g} {a.parity.details}")
    # JSON round trip is lossless
    again = Manifest.from_dict(json.loads((onnx_dir / MANIFEST_NAME).read_text()))
    assert again.to_dict() == m.to_dict()


def test_describe_engines_rows(onnx_dir):
    rows = describe_engines(onnx_dir)
    assert [(r["model"], r["format"]) for r in rows] == [("yolo", "onnx"), ("sam_encoder", "onnx"), ("sam_decoder", "onnx")]
    assert all(r["problem"] is None for r in rows), rows
    assert rows[1]["size_mb"] > 300  # vit_b encoder weights
    assert rows[2]["parity"].startswith("mask_iou=") and rows[0]["built_with"].startswith("onnx ")


# ------------------------------------------------------------------------------------ parity
def test_detector_parity_onnxruntime_vs_torch(onnx_dir, weights, torch_models):
    from mkgan_engine.backends.onnxruntime_backend import OnnxRuntimeDetector

    det = OnnxRuntimeDetector.from_dir(onnx_dir, "yolo", weights=weights["yolo"])
    assert det.provider == "CPUExecutionProvider" and det.input_size == 640 and det.num_classes == 80
    x = np.random.default_rng(3).random((1, 3, 640, 640), dtype=np.float32)
    out, ref = det(x), torch_models[0](x)
    assert out.shape == ref.shape == (1, 84, 8400)
    err = np.abs(out - ref)
    print(f"detector max abs error: boxes {err[:, :4].max():.3g} px, scores {err[:, 4:].max():.3g}")
    assert err[:, :4].max() < 0.05  # pixels, boxes span 0..640
    assert err[:, 4:].max() < 1e-4


def test_encoder_parity_recorded_and_backend_loads(onnx_dir, weights):
    """The encoder's parity (ONNX Runtime vs eager torch, vit_b at 1024x1024) as measured at export."""
    from mkgan_engine.backends.onnxruntime_backend import OnnxRuntimeSamEncoder

    art = read_manifest(onnx_dir).get("sam_encoder", "onnx")
    p = art.parity
    assert p.metric == "rel_l2" and p.passed and p.value < 1e-4, p
    assert p.runtime.startswith("onnxruntime ") and "CPUExecutionProvider" in p.runtime
    assert p.reference.startswith("torch fp32") and p.details["max_abs"] < 1e-3
    print(f"encoder relative L2 error {p.value:.3g}, max abs {p.details['max_abs']:.3g} (recorded at export)")
    enc = OnnxRuntimeSamEncoder.from_dir(onnx_dir, "sam_encoder", weights=weights["sam"])
    assert enc.name == "onnxruntime" and enc.provider == "CPUExecutionProvider"
    assert enc.input_names == ["image"] and enc.output_names == ["embeddings"]
    with pytest.raises(ValueError, match=r"must be \(1, 3, 1024, 1024\)"):
        enc(np.zeros((1, 3, 512, 512), np.float32))


def test_decoder_parity_dynamic_boxes(onnx_dir, torch_models):
    from mkgan_engine.backends.onnxruntime_backend import OnnxRuntimeSamDecoder

    dec = OnnxRuntimeSamDecoder.from_dir(onnx_dir, "sam_decoder")
    rng = np.random.default_rng(5)
    emb = rng.standard_normal((1, 256, 64, 64)).astype(np.float32)
    boxes3 = np.array([[100, 120, 600, 700], [10, 20, 1010, 990], [420, 400, 520, 610]], np.float32)
    for boxes in (boxes3[:1], boxes3):  # the same dynamic-N graph
        (m, q), (rm, rq) = dec(emb, boxes), torch_models[2](emb, boxes)
        assert m.shape == rm.shape == (len(boxes), 1, 256, 256) and q.shape == rq.shape == (len(boxes), 1)
        iou = mask_iou(m > 0, rm > 0)
        print(f"decoder N={len(boxes)}: mask IoU {iou.round(5).tolist()}, logits max abs {np.abs(m - rm).max():.3g}")
        assert iou.min() >= 0.98
        assert 0.05 < (rm > 0).mean() < 0.95 or iou.min() == 1.0  # a meaningful (non-trivial) comparison
        assert np.abs(q - rq).max() < 1e-3
    m0, q0 = dec(emb, np.zeros((0, 4), np.float32))
    assert m0.shape == (0, 1, 256, 256) and q0.shape == (0, 1)


# ------------------------------------------------------------------------------------ loader
def test_load_backends_onnxruntime(onnx_dir, weights):
    from mkgan_engine.backends.base import DetectorBackend, SamDecoderBackend, SamEncoderBackend
    from mkgan_engine.backends.loader import load_backends

    cfg = MaskerConfig(backend="onnxruntime", engines_dir=onnx_dir, yolo_weights=weights["yolo"],
                       sam_checkpoint=weights["sam"])
    det, enc, dec = load_backends(cfg)
    assert isinstance(det, DetectorBackend) and isinstance(enc, SamEncoderBackend) and isinstance(dec, SamDecoderBackend)
    assert det.name == enc.name == dec.name == "onnxruntime"
    assert {det.provider, enc.provider, dec.provider} == {"CPUExecutionProvider"}
    det2, _, _ = load_backends(MaskerConfig(name="sam", backend="onnxruntime", engines_dir=onnx_dir))
    assert det2 is None
    assert load_backends(cfg, detector=False)[0] is None  # the caller brings its own detector

    from mkgan_engine.maskers.yolo_sam import YoloSamMasker

    masker = YoloSamMasker(MaskerConfig(name="yolo-sam", backend="onnxruntime", engines_dir=onnx_dir))
    assert set(masker.backend_names.values()) == {"onnxruntime"}
    injected = YoloSamMasker(MaskerConfig(name="yolo-sam", backend="onnxruntime", engines_dir=onnx_dir), detector=det)
    assert injected.detector is det and injected.encoder.name == "onnxruntime"


def test_runtime_does_not_import_ultralytics_or_segment_anything(onnx_dir):
    code = f"""
import sys
import numpy as np
from mkgan_engine.config import MaskerConfig
from mkgan_engine.backends.loader import load_backends
det, enc, dec = load_backends(MaskerConfig(backend="onnxruntime", engines_dir={str(onnx_dir)!r}))
m, q = dec(np.zeros((1, 256, 64, 64), np.float32), np.array([[0, 0, 500, 500]], np.float32))
assert m.shape == (1, 1, 256, 256)
bad = [k for k in ("ultralytics", "segment_anything") if k in sys.modules]
assert not bad, bad
print("ok")
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-3000:]


def test_runtime_does_not_import_export():
    """The manifest is the runtime's contract: every engine module (backends, maskers, doctor, ...) imports
    without mkgan_engine.export; only the CLI, which mounts ``mkgan-engine export``, loads it."""
    code = """
import importlib, pkgutil, sys
import mkgan_engine, mkgan_engine.backends, mkgan_engine.maskers
names = [m.name for pkg in (mkgan_engine, mkgan_engine.backends, mkgan_engine.maskers)
         for m in pkgutil.iter_modules(pkg.__path__, pkg.__name__ + ".")]
names = [n for n in names if n not in ("mkgan_engine.cli", "mkgan_engine.export", "mkgan_engine.train", "mkgan_engine.cpp_ext")]
assert "mkgan_engine.backends.manifest" in names and "mkgan_engine.maskers.yolo_sam" in names, names
for name in names:
    importlib.import_module(name)
bad = sorted(k for k in sys.modules if k.startswith("mkgan_engine.export"))
assert not bad, bad
print("ok", len(names))
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                       check=False)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-3000:]


def test_loader_errors_are_clear(tmp_path, onnx_dir):
    from mkgan_engine.backends.loader import load_backends

    with pytest.raises(ValueError, match="pass engines_dir"):
        load_backends(MaskerConfig(backend="onnxruntime"))
    with pytest.raises(FileNotFoundError, match="directory not found"):
        load_backends(MaskerConfig(backend="onnxruntime", engines_dir=tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        load_backends(MaskerConfig(backend="onnxruntime", engines_dir=tmp_path / "empty"))
    with pytest.raises(ManifestError, match=r"no yolo artefact in format 'aoti'.*--format aoti"):
        load_backends(MaskerConfig(backend="aoti", engines_dir=onnx_dir))
    # a listed file that vanished
    d = _linked_copy(onnx_dir, tmp_path / "broken")
    (d / "sam_decoder.onnx").unlink()
    with pytest.raises(ManifestError, match="sam_decoder.onnx is missing"):
        load_backends(MaskerConfig(backend="onnxruntime", engines_dir=d))


def test_manifest_sha_mismatch_is_refused(tmp_path, onnx_dir, weights):
    from mkgan_engine.backends.loader import load_backends

    d = _linked_copy(onnx_dir, tmp_path / "edited")
    data = json.loads((d / MANIFEST_NAME).read_text())
    data["artefacts"][0]["source_sha256"] = "0" * 64  # yolo exported from "other" weights
    (d / MANIFEST_NAME).write_text(json.dumps(data))
    cfg = MaskerConfig(backend="onnxruntime", engines_dir=d, yolo_weights=weights["yolo"])
    with pytest.raises(ManifestMismatch, match=r"yolo/onnx.*different weights; re-export"):
        load_backends(cfg)
    # without the user's weights there is nothing to compare: it loads
    det, _, _ = load_backends(MaskerConfig(backend="onnxruntime", engines_dir=d))
    assert det is not None


def test_tool_version_mismatch_is_refused(tmp_path):
    (tmp_path / "m.pt2").write_bytes(b"x")
    (tmp_path / "m.engine").write_bytes(b"x")
    spec = [TensorSpec("x", [1], "float32")]
    aoti = Artefact("yolo", "aoti", "m.pt2", None, None, spec, spec, tool_versions={"torch": "1.13.1"})
    with pytest.raises(ManifestMismatch, match=r"built with torch 1\.13\.1 but torch .* is installed"):
        verify_artefact(aoti, tmp_path, installed={"torch": "2.14.1"})
    aoti.tool_versions = {"torch": "2.9.0"}  # same major: a warning, not a refusal
    assert verify_artefact(aoti, tmp_path, installed={"torch": "2.14.1"})
    eng = Artefact("sam_encoder", "engine", "m.engine", None, None, spec, spec, tool_versions={"tensorrt": "8.6.1"})
    with pytest.raises(ManifestMismatch, match=r"tensorrt 8\.6\.1 but tensorrt 10\.3\.0"):
        verify_artefact(eng, tmp_path, installed={"tensorrt": "10.3.0"})
    with pytest.raises(ManifestMismatch, match="tensorrt is not installed"):
        verify_artefact(eng, tmp_path, installed={"tensorrt": None})
    # edited json on disk -> describe_engines (doctor) reports the problem per artefact
    m = Manifest([aoti, eng])
    write_manifest(m, tmp_path)
    data = json.loads((tmp_path / MANIFEST_NAME).read_text())
    data["artefacts"][0]["tool_versions"]["torch"] = "1.0.0"
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(data))
    rows = {r["format"]: r for r in describe_engines(tmp_path)}
    assert "built with torch 1.0.0" in rows["aoti"]["problem"]
    assert rows["engine"]["problem"]


def test_invalid_manifest_is_refused(tmp_path):
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ManifestError, match="unreadable manifest"):
        read_manifest(tmp_path)
    spec = [TensorSpec("x", [1], "float32")]
    write_manifest(Manifest([Artefact("yolo", "tflite", "../x.onnx", None, None, spec, spec)]), tmp_path)
    with pytest.raises(ManifestError, match=r"unknown format 'tflite'.*must be relative"):
        read_manifest(tmp_path)


# ------------------------------------------------------------------------------------ error paths
def _leftovers(parent: Path) -> list[Path]:
    return [p for p in parent.iterdir() if ".partial-" in p.name]


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed here")
def test_missing_tensorrt_clear_error_nothing_written(tmp_path, weights, capsys):
    from mkgan_engine.export.cli import run_export
    from mkgan_engine.export.exporter import ExportOptions, export_models

    out = tmp_path / "engines"
    with pytest.raises(ImportError, match=r"TensorRT is not installed: pip install mkgan-engine\[gpu\] on an NVIDIA machine"):
        export_models(ExportOptions(weights["yolo"], weights["sam"], "vit_b", ["onnx", "engine"], out))
    assert not out.exists() and _leftovers(tmp_path) == []
    assert run_export(ExportOptions(weights["yolo"], None, "vit_b", "all", out)) == 1
    assert "TensorRT is not installed" in capsys.readouterr().err
    assert not out.exists() and _leftovers(tmp_path) == []


def test_unknown_sam_type_and_format(tmp_path, weights, capsys):
    from mkgan_engine.export.cli import run_export
    from mkgan_engine.export.exporter import ExportOptions, export_models

    out = tmp_path / "engines"
    with pytest.raises(ValueError, match=r"sam_type 'vit_x': unknown SAM type; choose from vit_b, vit_l, vit_h"):
        export_models(ExportOptions(None, weights["sam"], "vit_x", ["onnx"], out))
    with pytest.raises(ValueError, match=r"formats 'tflite': unknown export format"):
        export_models(ExportOptions(weights["yolo"], None, "vit_b", ["tflite"], out))
    with pytest.raises(ValueError, match="nothing to export"):
        export_models(ExportOptions(None, None, "vit_b", ["onnx"], out))
    with pytest.raises(FileNotFoundError, match="yolo_weights .*missing.pt: file not found"):
        export_models(ExportOptions(tmp_path / "missing.pt", None, "vit_b", ["onnx"], out))
    with pytest.raises(ValueError, match="multiple of 32"):
        export_models(ExportOptions(weights["yolo"], None, "vit_b", ["onnx"], out, imgsz=650))
    assert run_export(ExportOptions(None, weights["sam"], "vit_x", "onnx", out)) == 2
    assert "unknown SAM type" in capsys.readouterr().err
    assert not out.exists() and _leftovers(tmp_path) == []


def test_failed_export_leaves_output_untouched(tmp_path, weights, monkeypatch):
    """A step failing half-way (after files were written) leaves out_dir exactly as it was."""
    from mkgan_engine.export import exporter, onnx_export

    out = tmp_path / "engines"
    out.mkdir()
    (out / "keep.txt").write_text("previous run")

    def broken(module, args, path, *a, **k):
        path.write_bytes(b"half-written")
        raise RuntimeError("simulated failure in the middle of the export")

    monkeypatch.setattr(onnx_export, "export_onnx", broken)
    with pytest.raises(exporter.ExportError, match="simulated failure.*nothing was written"):
        exporter.export_models(exporter.ExportOptions(weights["yolo"], None, "vit_b", ["onnx"], out))
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"] and _leftovers(tmp_path) == []


def test_publish_merges_with_existing_manifest(tmp_path):
    from mkgan_engine.export.exporter import _publish

    spec = [TensorSpec("x", [1], "float32")]
    out = tmp_path / "engines"
    out.mkdir()
    (out / "yolo.onnx").write_bytes(b"old")
    (out / "yolo.onnx.data").write_bytes(b"old data")
    (out / "sam_encoder.onnx").write_bytes(b"enc")
    write_manifest(Manifest([Artefact("yolo", "onnx", "yolo.onnx", None, None, spec, spec, data_files=["yolo.onnx.data"]),
                             Artefact("sam_encoder", "onnx", "sam_encoder.onnx", None, None, spec, spec)]), out)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    (tmp / "yolo.onnx").write_bytes(b"new")
    (tmp / "yolo.pt2").write_bytes(b"pkg")
    m = _publish(tmp, out, [Artefact("yolo", "onnx", "yolo.onnx", None, None, spec, spec),
                            Artefact("yolo", "aoti", "yolo.pt2", None, None, spec, spec)])
    assert [(a.model, a.format) for a in m.artefacts] == [("yolo", "onnx"), ("sam_encoder", "onnx"), ("yolo", "aoti")]
    assert (out / "yolo.onnx").read_bytes() == b"new" and not (out / "yolo.onnx.data").exists()
    assert read_manifest(out).to_dict() == m.to_dict()


def test_export_cli_is_mounted():
    from typer.testing import CliRunner

    from mkgan_engine.cli import app

    r = CliRunner().invoke(app, ["export", "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0
    for opt in ("--yolo-weights", "--yolo", "--sam-checkpoint", "--sam", "--sam-type", "--format", "--half", "--imgsz",
                "--workspace", "-o"):
        assert re.search(re.escape(opt) + r"(?![-\w])", r.output), opt  # --sam must not match --sam-type


def test_doctor_lists_engines(onnx_dir, monkeypatch):
    from typer.testing import CliRunner

    import mkgan_engine.cpp_ext
    from mkgan_engine.cli import app

    # doctor builds the C++ extension to report on it; not what this test is about
    monkeypatch.setattr(mkgan_engine.cpp_ext, "masked_crop_status", lambda build=True: {"built": True, "detail": "test"})
    r = CliRunner().invoke(app, ["doctor", "--device", "cpu", "--backend", "onnxruntime", "--engines", str(onnx_dir)],
                           env={"COLUMNS": "250"})
    assert r.exit_code == 0, r.output
    for model in ("yolo", "sam_encoder", "sam_decoder"):
        assert f"engine {model}/onnx" in r.output
    assert "mask_iou=1" in r.output or "mask_iou=0.99" in r.output
    r = CliRunner().invoke(app, ["doctor", "--device", "cpu", "--engines", str(onnx_dir.parent / "missing")],
                           env={"COLUMNS": "250"})
    assert r.exit_code == 1 and "does not exist" in r.output


# ------------------------------------------------------------------------------------ AOTI / TensorRT
@pytest.mark.slow
def test_aoti_decoder_cpu_dynamic_boxes_and_chunking(tmp_path, weights, torch_models):
    """The decoder package with a dynamic box count (1..2 here) on CPU (~50 s of C++ compile on a loaded
    CPU core); 3 boxes exceed the maximum and are run in chunks by the backend."""
    from mkgan_engine.backends.aoti_backend import AotiSamDecoder
    from mkgan_engine.export.exporter import ExportOptions, export_models

    m = export_models(ExportOptions(None, weights["sam"], "vit_b", ["aoti"], tmp_path, max_boxes=2, models=["sam_decoder"]))
    assert [a.model for a in m.artefacts] == ["sam_decoder"]
    art = m.get("sam_decoder", "aoti")
    assert art.parity.passed and art.inputs[1].shape == ["num_boxes", 4], art
    dec = AotiSamDecoder.from_dir(tmp_path, "sam_decoder", device="cpu", weights=weights["sam"])
    emb = np.random.default_rng(6).standard_normal((1, 256, 64, 64)).astype(np.float32)
    boxes = np.array([[100, 120, 600, 700], [10, 20, 1010, 990], [420, 400, 520, 610]], np.float32)
    for n in (1, 3):
        (mk, q), (rm, rq) = dec(emb, boxes[:n]), torch_models[2](emb, boxes[:n])
        assert mk.shape == rm.shape == (n, 1, 256, 256)
        assert mask_iou(mk > 0, rm > 0).min() >= 0.98 and np.abs(q - rq).max() < 1e-3
    print(f"aoti decoder: compile+check {art.export_seconds:.0f} s, parity {art.parity.value:.4g}")


@pytest.mark.gpu
def test_aoti_all_models_cuda(tmp_path, weights):
    from mkgan_engine.backends.loader import load_backends
    from mkgan_engine.export.exporter import ExportOptions, export_models

    m = export_models(ExportOptions(weights["yolo"], weights["sam"], "vit_b", ["aoti"], tmp_path, device="cuda", half=True))
    assert all(a.parity.passed for a in m.artefacts), [a.parity for a in m.artefacts]
    det, enc, dec = load_backends(MaskerConfig(backend="aoti", engines_dir=tmp_path, device="cuda"))
    masks, iou = dec(enc(np.zeros((1, 3, 1024, 1024), np.float32)), np.zeros((70, 4), np.float32) + [0, 0, 500, 500])
    assert masks.shape == (70, 1, 256, 256)  # > max_boxes: chunked


@pytest.mark.gpu
@pytest.mark.skipif(not HAVE_TRT, reason="needs TensorRT")
@pytest.mark.parametrize("half", [False, True])
def test_tensorrt_engines(tmp_path, weights, half):
    from mkgan_engine.backends.loader import load_backends
    from mkgan_engine.export.exporter import ExportOptions, export_models

    m = export_models(ExportOptions(weights["yolo"], weights["sam"], "vit_b", ["engine"], tmp_path, half=half, workspace_gb=4))
    engines = [a for a in m.artefacts if a.format == "engine"]
    assert len(engines) == 3 and all(a.parity.passed for a in engines), [a.parity for a in engines]
    assert all(a.precision == ("fp16" if half else "fp32") for a in engines)
    det, enc, dec = load_backends(MaskerConfig(backend="tensorrt", engines_dir=tmp_path, device="cuda"))
    masks, _ = dec(enc(np.zeros((1, 3, 1024, 1024), np.float32)), np.zeros((70, 4), np.float32) + [0, 0, 500, 500])
    assert masks.shape == (70, 1, 256, 256)
