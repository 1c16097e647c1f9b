"""One place that knows every export format: YOLOv8 and SAM (image encoder + box-prompt decoder) ->
ONNX / TensorRT engine / AOTInductor package, with a manifest.

    from mkgan_engine.export import ExportOptions, export_models
    manifest = export_models(ExportOptions("yolov8n.pt", "sam_vit_b.pth", "vit_b", ["onnx"], Path("engines")))

Formats (``ExportOptions.formats``; ``"all"`` = every one):

- ``onnx``: ``torch.onnx.export(..., dynamo=True)`` of the modules of
  :mod:`mkgan_engine.backends.torch_modules` (see :mod:`mkgan_engine.export.onnx_export`); always
  fp32. NMS is *not* in the YOLO graph: the raw ``(1, 4 + nc, A)`` predictions are decoded and
  NMS-ed by the shared numpy post-processing, the same for every backend.
- ``engine``: TensorRT engines built from those ONNX files with the TensorRT Python API (fp16 when
  ``half``, SAM LayerNorms kept fp32, an optimisation profile for the decoder's box count 1..
  ``max_boxes`` and, with ``dynamic_batch``, for the batch); needs TensorRT + an NVIDIA GPU. The ONNX
  files they were built from are kept as ``onnx`` artefacts. Checked before anything is written: a
  missing TensorRT raises "TensorRT is not installed: pip install mkgan-engine[gpu] on an NVIDIA
  machine".
- ``aoti``: ``torch.export`` + ``torch._inductor.aoti_compile_and_package`` -> ``.pt2`` packages
  for ``device`` (cpu or cuda; fp16 with ``half`` on CUDA only). On CPU this compiles generated C++
  with the system compiler: minutes per model (the SAM encoder is the slowest), needs g++.

Everything is written to a temporary directory next to ``out_dir`` and moved into ``out_dir`` only
when every requested artefact was exported and checked: an error leaves ``out_dir`` untouched.
Artefacts already in ``out_dir`` (other models/formats) are kept and the manifest is merged.

Parity is measured at export time on fixed seeded inputs, exported runtime vs eager torch fp32 on
CPU (metrics in :mod:`mkgan_engine.export.parity`), and stored in the manifest; a failed parity
check is logged as a warning and shown by ``mkgan-engine doctor --engines DIR``.
"""

from __future__ import annotations

import logging
import os
import resource
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, Sequence

from mkgan_engine.backends.manifest import (
    FORMATS,
    MANIFEST_NAME,
    MODELS,
    Artefact,
    Manifest,
    ManifestError,
    Parity,
    TensorSpec,
    file_sha256,
    read_manifest,
    tool_versions,
    write_manifest,
)
from mkgan_engine.config import SAM_TYPES, SamType

if TYPE_CHECKING:  # torch is imported on use: importing this module stays cheap
    import torch

    from mkgan_engine.export.modules import IOSpec

log = logging.getLogger(__name__)

ArtefactFactory = Callable[..., Artefact]
"""``make(fmt, file, inputs, outputs, **fields)``: an :class:`Artefact` of the current job (see _export_job)."""

__all__ = ["ExportError", "ExportOptions", "export_models", "normalize_formats"]

DEFAULT_MAX_BOXES = 64
"""Largest box count of the decoder's TensorRT profile / AOTI dynamic dim (more are chunked at run time)."""
DEFAULT_MAX_BATCH = 8


class ExportError(RuntimeError):
    """The export could not be done (nothing was written to the output directory)."""


def normalize_formats(formats: str | Sequence[str]) -> tuple[str, ...]:
    """"all" -> every format; validates names; keeps order, drops duplicates. Accepts "onnx,engine"."""
    items = [formats] if isinstance(formats, str) else list(formats)
    out: list[str] = []
    for item in items:
        for f in str(item).split(","):
            f = f.strip().lower()
            if not f:
                continue
            if f == "all":
                out.extend(FORMATS)
            elif f in FORMATS:
                out.append(f)
            else:
                raise ValueError(f"formats {f!r}: unknown export format; choose from {', '.join(FORMATS)} or all")
    if not out:
        raise ValueError(f"no export format given; choose from {', '.join(FORMATS)} or all")
    return tuple(dict.fromkeys(out))


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _weights_path(path: Path | str | None, option: str) -> Path | None:
    if path is None or str(path) == "":
        return None
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"{option} {p}: file not found")
    return p.resolve()


@dataclass
class _Job:
    """One model to export: the eager fp32 module (CPU) and where it came from."""

    model: str
    module: Any
    source: Path
    sha256: str
    half_inputs: tuple[bool, ...]
    extra: dict[str, Any] = field(default_factory=dict)
    references: list[tuple] = field(default_factory=list)  # torch outputs for parity_inputs
    parity_inputs: list[tuple] = field(default_factory=list)


@dataclass(frozen=True)
class ExportOptions:
    """Everything ``mkgan-engine export`` can be asked for (checked by :func:`export_models`).

    yolo_weights: ultralytics YOLOv8 detection .pt (or None); sam_checkpoint: segment_anything
    state_dict .pth of ``sam_type`` (or None) - at least one is needed. formats: some of
    :data:`FORMATS`, or "all", as a sequence or one comma-separated string. out_dir: the engines
    directory (manifest.json + model files). half: fp16 TensorRT engines / CUDA AOTI packages.
    imgsz: detector input side in pixels (multiple of 32). workspace_gb: TensorRT builder workspace
    (GB). dynamic_batch: dynamic leading dimension for the detector and encoder (1..max_batch).
    device: where ``aoti`` packages run and TensorRT builds (cuda); ONNX export and parity
    references run on CPU. opset: ONNX opset (None = the exporter's default). max_boxes: largest box
    count of the decoder's TensorRT profile / AOTI dynamic dim. check_parity: measure exported vs
    eager torch and record it in the manifest. models: export only these of yolo / sam_encoder /
    sam_decoder (None = every model whose weights are given).
    """

    yolo_weights: Path | str | None = None
    sam_checkpoint: Path | str | None = None
    sam_type: SamType = "vit_b"
    formats: str | Sequence[str] = ("onnx",)
    out_dir: Path | str = "engines"
    half: bool = False
    imgsz: int = 640
    workspace_gb: float = 4.0
    dynamic_batch: bool = False
    device: str = "cpu"
    opset: int | None = None
    max_boxes: int = DEFAULT_MAX_BOXES
    max_batch: int = DEFAULT_MAX_BATCH
    check_parity: bool = True
    models: Sequence[str] | None = None


def _checked(options: ExportOptions) -> ExportOptions:
    """``options`` with formats/models as tuples and out_dir a Path; ValueError on a bad value."""
    fmts = normalize_formats(options.formats)
    if options.sam_type not in SAM_TYPES:
        raise ValueError(f"sam_type {options.sam_type!r}: unknown SAM type; choose from {', '.join(SAM_TYPES)}")
    for name in options.models or ():
        if name not in MODELS:
            raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    imgsz = options.imgsz
    if not isinstance(imgsz, int) or imgsz <= 0 or imgsz % 32:
        raise ValueError(f"imgsz {imgsz}: must be a positive multiple of 32 (YOLOv8's largest stride)")
    if options.workspace_gb <= 0:
        raise ValueError(f"workspace_gb {options.workspace_gb}: must be > 0 GB")
    if options.max_boxes < 1 or options.max_batch < 1:
        raise ValueError("max_boxes and max_batch must be >= 1")
    out = Path(options.out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise ValueError(f"-o {out}: exists and is not a directory")
    return replace(options, formats=fmts, out_dir=out, models=tuple(options.models) if options.models else None)


def export_models(options: ExportOptions) -> Manifest:
    """Export the models of ``options`` to every requested format under ``options.out_dir``;
    returns the merged manifest (see :class:`ExportOptions` and the module docstring).

    Raises ValueError / FileNotFoundError for bad options, ImportError for missing tools
    (TensorRT, onnx), ExportError when an export step fails; ``out_dir`` is unchanged on error.
    """
    opts = _checked(options)
    fmts, out = opts.formats, Path(opts.out_dir)
    yolo_path = _weights_path(opts.yolo_weights, "yolo_weights")
    sam_path = _weights_path(opts.sam_checkpoint, "sam_checkpoint")
    if yolo_path is None and sam_path is None:
        raise ValueError("nothing to export: give yolo_weights and/or sam_checkpoint")
    wanted = opts.models or MODELS
    for name in opts.models or ():
        if (yolo_path if name == "yolo" else sam_path) is None:
            raise ValueError(f"{name} needs {'yolo_weights' if name == 'yolo' else 'sam_checkpoint'}")

    # Tools, checked before anything is loaded or written.
    trt = None
    if "engine" in fmts:
        from mkgan_engine.backends.tensorrt_backend import require_tensorrt

        trt = require_tensorrt()  # TensorRTUnavailable (ImportError) with the install hint
    if "onnx" in fmts or "engine" in fmts:
        try:
            import onnx  # noqa: F401
            import onnxscript  # noqa: F401
        except ImportError as e:
            raise ImportError(f"ONNX export needs onnx and onnxscript ({e.name} is missing): "
                              "pip install 'mkgan-engine[onnx]'") from e
    import torch

    from mkgan_engine.device import resolve_device

    dev = resolve_device(opts.device)  # where AOTI packages run; ValueError when CUDA is asked for and missing
    trt_dev = dev  # TensorRT always builds on a CUDA device: --device's if it is one, else the default GPU
    if "engine" in fmts and dev.type != "cuda":
        if not torch.cuda.is_available():
            raise ExportError("TensorRT engines are built on (and for) an NVIDIA GPU, and no CUDA device is available here")
        trt_dev = torch.device("cuda")
    if "engine" in fmts:
        log.info("building TensorRT engines on %s", torch.cuda.get_device_name(trt_dev))
    if opts.half and not ({"engine", "aoti"} & set(fmts)):
        log.warning("half only applies to TensorRT engines and CUDA AOTInductor packages; ONNX files are fp32")

    jobs = [j for j in _load_jobs(yolo_path if "yolo" in wanted else None, sam_path if {"sam_encoder", "sam_decoder"} & set(wanted)
                                  else None, opts.sam_type, opts.imgsz) if j.model in wanted]

    # From here on files are written, in a temporary sibling of out_dir.
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        artefacts: list[Artefact] = []
        for job in jobs:
            artefacts += _export_job(job, opts, tmp, dev=dev, trt_dev=trt_dev, trt=trt)
        return _publish(tmp, out, artefacts)
    except ExportError:
        raise
    except (ValueError, FileNotFoundError, ImportError, KeyboardInterrupt):
        raise
    except Exception as e:
        raise ExportError(f"export failed ({type(e).__name__}: {e}); nothing was written to {out}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------------------------ loading
def _load_jobs(yolo_path: Path | None, sam_path: Path | None, sam_type: str, imgsz: int) -> list[_Job]:
    from mkgan_engine.backends.torch_modules import (
        DetectorModule,
        SamBoxDecoderModule,
        SamEncoderModule,
        load_sam,
        load_yolo,
    )

    jobs: list[_Job] = []
    if yolo_path is not None:
        det = DetectorModule(load_yolo(yolo_path, "cpu")).eval()
        import torch

        with torch.inference_mode():  # ultralytics' Detect head builds its anchors lazily on the first call:
            det(torch.zeros(1, 3, imgsz, imgsz))  # build them eagerly so export sees constants, not attribute writes
        names = getattr(det.model, "names", None)
        extra = {"imgsz": imgsz, "num_classes": det.num_classes}
        if isinstance(names, dict):
            extra["names"] = {str(k): str(v) for k, v in names.items()}
        jobs.append(_Job("yolo", det, yolo_path, file_sha256(yolo_path), (True,), extra))
    if sam_path is not None:
        sam = load_sam(sam_path, sam_type, "cpu")
        sha = file_sha256(sam_path)
        jobs.append(_Job("sam_encoder", SamEncoderModule(sam).eval(), sam_path, sha, (True,), {"sam_type": sam_type}))
        jobs.append(_Job("sam_decoder", SamBoxDecoderModule(sam).eval(), sam_path, sha, (True, False),
                         {"sam_type": sam_type}))
    return jobs


# ------------------------------------------------------------------------------------ per model
def _prepare_references(job: _Job, imgsz: int) -> None:
    """Fixed parity inputs and eager torch fp32 CPU outputs (decoder: 1 and 3 boxes, same dynamic-N graph)."""
    import torch

    from mkgan_engine.export.modules import example_inputs

    if job.references:
        return
    if job.model == "sam_decoder":
        job.parity_inputs = [example_inputs("sam_decoder", num_boxes=n, seed=1) for n in (1, 3)]
    else:
        job.parity_inputs = [example_inputs(job.model, imgsz, seed=1)]
    with torch.inference_mode():
        for args in job.parity_inputs:
            out = job.module(*args)
            job.references.append(tuple(o.clone() for o in out) if isinstance(out, (tuple, list)) else (out.clone(),))


def _stamp(art: Artefact, t0: float) -> Artefact:
    """Record the export's wall time (seconds since ``t0``) and the process's peak RSS (MB) on ``art``."""
    art.export_seconds = round(time.perf_counter() - t0, 2)
    art.extra["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    return art


def _measure(job: _Job, run: Callable[..., list], precision: str, runtime: str) -> Parity:
    from mkgan_engine.export.parity import decoder_parity, detector_parity, encoder_parity

    outs = [run(*[a.numpy() for a in args]) for args in job.parity_inputs]
    if job.model == "yolo":
        p = detector_parity(outs[0][0], job.references[0][0], precision, runtime)
    elif job.model == "sam_encoder":
        p = encoder_parity(outs[0][0], job.references[0][0], precision, runtime)
    else:
        p = decoder_parity([(tuple(o), tuple(r)) for o, r in zip(outs, job.references)], precision, runtime)
    p.reference = "torch fp32 eager, cpu"
    level = logging.INFO if p.passed else logging.WARNING
    log.log(level, "%s parity (%s vs torch): %s = %.4g (tolerance %.3g)%s", job.model, runtime, p.metric, p.value,
            p.tolerance, "" if p.passed else " - FAILED")
    return p


def _io_from_program(spec: IOSpec, program: torch.export.ExportedProgram) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """TensorSpecs of an ExportedProgram's user inputs/outputs (symbolic sizes named as in ``spec``)."""
    dyn0 = next((dims[0] for dims in spec.dynamic.values() if 0 in dims), None)
    nodes = {n.name: n for n in program.graph.nodes}
    sig = program.graph_signature

    def shape(val, dims: dict[int, str]) -> list[int | str]:
        return [int(s) if isinstance(s, int) else dims.get(i, str(s)) for i, s in enumerate(val.shape)]

    def dtype(val) -> str:
        return str(val.dtype).replace("torch.", "")

    in_vals = [nodes[n].meta["val"] for n in sig.user_inputs]
    out_node = next(n for n in program.graph.nodes if n.op == "output")
    out_args = out_node.args[0]
    out_vals = [a.meta["val"] for a in (out_args if isinstance(out_args, (tuple, list)) else [out_args])]
    out_vals = out_vals[-len(spec.outputs):]  # user outputs come after buffer mutations
    inputs = [TensorSpec(n, shape(v, spec.dynamic.get(n, {})), dtype(v)) for n, v in zip(spec.inputs, in_vals)]
    outputs = [TensorSpec(n, shape(v, {0: dyn0} if dyn0 else {}), dtype(v)) for n, v in zip(spec.outputs, out_vals)]
    return inputs, outputs


def _export_job(job: _Job, opts: ExportOptions, tmp: Path, *, dev: torch.device, trt_dev: torch.device,
                trt: ModuleType | None) -> list[Artefact]:
    """Every format of ``opts`` (checked) for one model, written into ``tmp``; returns their artefacts (ONNX first).

    dev: where AOTI packages run; trt_dev: the CUDA device TensorRT builds on; trt: the tensorrt
    module (None unless "engine" is requested).
    """
    from mkgan_engine.export.modules import example_inputs, io_spec, layernorms_as_onnx_op, torch_dynamic_shapes
    from mkgan_engine.export.onnx_export import DEFAULT_OPSET, export_onnx, read_io_specs

    fmts = opts.formats
    spec = io_spec(job.model, opts.dynamic_batch)
    if job.model == "yolo" and opts.dynamic_batch:
        head = job.module.model.model[-1]
        if hasattr(head, "dynamic"):
            head.dynamic = True  # anchors computed in the graph (a cached batch size would pin the batch dim)
    dyn = torch_dynamic_shapes(job.model, spec, opts.max_boxes, opts.max_batch)
    batch = 2 if (opts.dynamic_batch and job.model != "sam_decoder") else 1
    ex_args = example_inputs(job.model, opts.imgsz, batch=batch, num_boxes=2)
    if opts.check_parity:
        _prepare_references(job, opts.imgsz)
    versions = tool_versions()
    extra = dict(job.extra)
    if job.model == "sam_decoder":
        extra["max_boxes"] = opts.max_boxes
    if opts.dynamic_batch and job.model != "sam_decoder":
        extra["max_batch"] = opts.max_batch

    def artefact(fmt: str, file: str, inputs, outputs, **kw) -> Artefact:
        return Artefact(model=job.model, format=fmt, file=file, source=str(job.source), source_sha256=job.sha256,
                        inputs=inputs, outputs=outputs, tool_versions=versions, extra=dict(extra), **kw)

    results: list[Artefact] = []
    onnx_art: Artefact | None = None
    if "onnx" in fmts or "engine" in fmts:
        t0 = time.perf_counter()
        log.info("%s -> ONNX (dynamo exporter)...", job.model)
        path = tmp / f"{job.model}.onnx"
        with layernorms_as_onnx_op(job.module) as swapped:
            data_files, used_opset = export_onnx(job.module, ex_args, path, spec, dyn, opts.opset or DEFAULT_OPSET)
        inputs, outputs = read_io_specs(path)
        onnx_art = artefact("onnx", path.name, inputs, outputs, precision="fp32", opset=used_opset, device="cpu",
                            data_files=data_files,
                            notes=("raw predictions before NMS (NMS runs in the shared numpy post-processing)"
                                   if job.model == "yolo" else
                                   f"{swapped} LayerNorm2d exported as LayerNormalization" if swapped else ""))
        if opts.check_parity:
            from mkgan_engine.backends.onnxruntime_backend import OnnxRuntimeModel

            ort_model = OnnxRuntimeModel(path, device="cpu")
            onnx_art.parity = _measure(job, ort_model.run, "fp32", f"onnxruntime {versions.get('onnxruntime')} "
                                       f"{ort_model.provider}")
            del ort_model
        _stamp(onnx_art, t0)
        log.info("%s -> %s in %.1f s", job.model, path.name, onnx_art.export_seconds)
        results.append(onnx_art)

    if "engine" in fmts:
        results.append(_engine(job, onnx_art, tmp, opts, trt=trt, dev=trt_dev, spec=spec, dyn=dyn, ex_args=ex_args,
                               make=artefact))
    if "aoti" in fmts:
        results.append(_aoti(job, tmp, opts, dev=dev, spec=spec, dyn=dyn, ex_args=ex_args, make=artefact))
    return results


def _engine(job: _Job, onnx_art: Artefact, tmp: Path, opts: ExportOptions, *, trt: ModuleType, dev: torch.device,
            spec: IOSpec, dyn: tuple | None, ex_args: tuple[torch.Tensor, ...], make: ArtefactFactory) -> Artefact:
    """TensorRT engine built from the job's ONNX file (or, for fp16 on TensorRT >= 11, from a
    mixed-precision ONNX export), with an optimisation profile for every dynamic input."""
    import torch

    from mkgan_engine.export.modules import MixedPrecision
    from mkgan_engine.export.onnx_export import DEFAULT_OPSET, export_onnx
    from mkgan_engine.export.tensorrt_export import build_engine, weak_typing_available

    t0 = time.perf_counter()
    half, max_boxes, max_batch, workspace_gb = opts.half, opts.max_boxes, opts.max_batch, opts.workspace_gb
    profiles: dict[str, tuple] = {}
    shapes = {t.name: t.shape for t in onnx_art.inputs}
    for name, dims in spec.dynamic.items():
        full = shapes[name]
        lo, opt, hi = ([1 if isinstance(d, str) else d for d in full],
                       [(min(8, max_boxes) if job.model == "sam_decoder" else 1) if isinstance(d, str) else d for d in full],
                       [(max_boxes if job.model == "sam_decoder" else max_batch) if isinstance(d, str) else d for d in full])
        profiles[name] = (tuple(lo), tuple(opt), tuple(hi))
    source = tmp / onnx_art.file
    strongly = bool(half and not weak_typing_available(trt))
    if strongly:  # TensorRT >= 11: precision lives in the graph
        scratch = tmp / ".scratch"
        source = scratch / f"{job.model}.fp16.onnx"
        log.info("%s: TensorRT %s is strongly typed: exporting a mixed-precision ONNX (fp16, LayerNorm fp32)",
                 job.model, trt.__version__)
        export_onnx(MixedPrecision(job.module, job.half_inputs), ex_args, source, spec, dyn, opts.opset or DEFAULT_OPSET)
    path = tmp / f"{job.model}.engine"
    log.info("%s -> TensorRT engine (%s)...", job.model, "fp16" if half else "fp32")
    with torch.cuda.device(dev):
        result = build_engine(source, path, half=half, strongly_typed_fp16=strongly, workspace_gb=workspace_gb,
                              profiles=profiles)
    art = make("engine", path.name, onnx_art.inputs, onnx_art.outputs, precision=result.precision,
               opset=onnx_art.opset, device=str(dev), notes=result.detail)
    art.extra.update({"profile": result.profile, "built_from": onnx_art.file, "gpu": torch.cuda.get_device_name(dev),
                      "workspace_gb": workspace_gb})
    if opts.check_parity:
        from mkgan_engine.backends.tensorrt_backend import TensorRTModel

        engine_run = TensorRTModel(path, device=str(dev), artefact=art).run
        art.parity = _measure(job, engine_run, result.precision, f"tensorrt {trt.__version__}")
        del engine_run  # release the engine before returning
    return _stamp(art, t0)


def _aoti(job: _Job, tmp: Path, opts: ExportOptions, *, dev: torch.device, spec: IOSpec, dyn: tuple | None,
          ex_args: tuple[torch.Tensor, ...], make: ArtefactFactory) -> Artefact:
    """``torch.export`` + AOTInductor ``.pt2`` package for ``dev`` (fp16 with LayerNorm fp32 when ``opts.half`` on CUDA)."""
    import torch

    from mkgan_engine.export.modules import MixedPrecision

    t0 = time.perf_counter()
    use_half = bool(opts.half and dev.type == "cuda")
    if opts.half and not use_half:
        log.warning("%s: half is ignored for CPU AOTInductor packages (compiled in fp32)", job.model)
    module = MixedPrecision(job.module, job.half_inputs) if use_half else job.module
    path = tmp / f"{job.model}.pt2"
    log.info("%s -> AOTInductor package for %s (torch.export + C++%s compile; minutes on CPU)...", job.model, dev.type,
             "/CUDA" if dev.type == "cuda" else "")
    module.to(dev).eval()
    args = tuple(a.to(dev) for a in ex_args)
    try:
        with torch.no_grad():
            program = torch.export.export(module, args, dynamic_shapes=dyn)
        torch._inductor.aoti_compile_and_package(program, package_path=str(path))
    finally:
        module.to("cpu")
    inputs, outputs = _io_from_program(spec, program)
    art = make("aoti", path.name, inputs, outputs, precision="fp16" if use_half else "fp32", opset=None,
               device=dev.type, notes="fp16 weights/activations, LayerNorm fp32, fp32 I/O" if use_half else "")
    if opts.check_parity:
        from mkgan_engine.backends.aoti_backend import AotiModel

        package_run = AotiModel(path, device=str(dev), artefact=art).run
        art.parity = _measure(job, package_run, art.precision, f"aoti torch {torch.__version__} {dev.type}")
        del package_run
    return _stamp(art, t0)


# ------------------------------------------------------------------------------------ publish
def _publish(tmp: Path, out: Path, artefacts: list[Artefact]) -> Manifest:
    """Move the new files into ``out`` and merge the manifest (written last, atomically)."""
    manifest = Manifest()
    if (out / MANIFEST_NAME).is_file():
        try:
            manifest = read_manifest(out, validate=False)
        except ManifestError as e:
            log.warning("%s: replacing an unreadable manifest (%s)", out, e)
    for a in artefacts:  # every file must be there before anything moves
        for f in a.files():
            if not (tmp / f).is_file():
                raise ExportError(f"{a.model}/{a.format}: {f} was not produced")
    out.mkdir(parents=True, exist_ok=True)
    new_files = {f for a in artefacts for f in a.files()}
    for a in artefacts:
        old = manifest.find(a.model, a.format)
        for f in (old.files() if old else []):
            if f not in new_files and f != MANIFEST_NAME:
                (out / f).unlink(missing_ok=True)  # e.g. external data the new artefact does not use
        for f in a.files():
            os.replace(tmp / f, out / f)
        manifest.upsert(a)
    manifest.created = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    manifest.tool_versions = tool_versions()
    write_manifest(manifest, out)
    log.info("wrote %d artefact(s) to %s", len(artefacts), out)
    return manifest
