"""``manifest.json``: the runtime contract of an engines directory - which files it holds, their
tensor shapes, the tool versions that made them and the checksums of the weights they came from.

It lives on the runtime side: the backends read it, :mod:`mkgan_engine.export` writes it (export
depends on the runtime, never the reverse). One manifest per engines directory.

Each :class:`Artefact` is one model (``yolo``, ``sam_encoder``, ``sam_decoder``) in one format
(``onnx``, ``engine`` = TensorRT plan, ``aoti`` = torch AOTInductor ``.pt2`` package), with its I/O
tensor specs (dynamic dimensions named, e.g. ``num_boxes``), the precision, the ONNX opset, the
versions of the tools that made it, the sha256 of the source weights and the parity error measured
at export time (exported runtime vs eager torch on a fixed input).

Runtime backends load artefacts through :func:`locate_artefact` (= :func:`read_manifest` +
:func:`verify_artefact`), which refuses (``ManifestMismatch``) an artefact whose source weights
differ from the ones the user passes, or whose TensorRT / torch (AOTI) major version differs from
the installed one.

Only the standard library is imported here (plus ``importlib.metadata``), so reading a manifest is
cheap and works without torch/onnx installed.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1

MODELS: tuple[str, ...] = ("yolo", "sam_encoder", "sam_decoder")
FORMATS: tuple[str, ...] = ("onnx", "engine", "aoti")
"""Export formats: ONNX (ONNX Runtime), TensorRT engine (plan), torch AOTInductor package."""
BACKEND_FORMAT: dict[str, str] = {"onnxruntime": "onnx", "tensorrt": "engine", "aoti": "aoti"}
"""Which artefact format each runtime backend (``MaskerConfig.backend``) loads."""

TOOLS: dict[str, str] = {
    # manifest key -> distribution name(s) tried in order
    "torch": "torch",
    "onnx": "onnx",
    "onnxruntime": "onnxruntime onnxruntime-gpu",
    "onnxscript": "onnxscript",
    "tensorrt": "tensorrt tensorrt-cu12 tensorrt-cu13 tensorrt-cu11",
    "ultralytics": "ultralytics",
    "segment_anything": "segment-anything segment_anything",
    "mkgan_engine": "mkgan-engine",
}

__all__ = [
    "BACKEND_FORMAT",
    "FORMATS",
    "MANIFEST_NAME",
    "MODELS",
    "Artefact",
    "Manifest",
    "ManifestError",
    "ManifestMismatch",
    "Parity",
    "TensorSpec",
    "describe_engines",
    "file_sha256",
    "locate_artefact",
    "read_manifest",
    "tool_versions",
    "verify_artefact",
    "write_manifest",
]


class ManifestError(ValueError):
    """The manifest is missing, unreadable or malformed, or lacks the requested artefact."""


class ManifestMismatch(ManifestError):
    """An artefact does not match the user's weights or the installed tools: re-export it."""


# ------------------------------------------------------------------------------------ helpers
def tool_versions() -> dict[str, str | None]:
    """Installed versions of the tools that matter for exported files (None = not installed).

    Read from package metadata, so nothing heavy (torch, tensorrt) is imported.
    """
    out: dict[str, str | None] = {}
    for key, dists in TOOLS.items():
        out[key] = None
        for dist in dists.split():
            try:
                out[key] = importlib.metadata.version(dist)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    return out


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path | str, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file (streamed; a 2.5 GB SAM vit_h checkpoint takes a few seconds).

    Cached per (path, size, mtime) so the SAM checkpoint is hashed once for encoder and decoder.
    """
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def _major(version: str | None) -> int | None:
    if not version:
        return None
    head = version.split("+")[0].split(".")[0]
    return int(head) if head.isdigit() else None


def _major_minor(version: str | None) -> tuple[int, ...] | None:
    if not version:
        return None
    parts = version.split("+")[0].split(".")[:2]
    try:
        return tuple(int(p) for p in parts)
    except ValueError:
        return None


# ------------------------------------------------------------------------------------ schema
@dataclass
class TensorSpec:
    """One input/output tensor: name, shape (ints; strings name dynamic dims) and numpy dtype name."""

    name: str
    shape: list[int | str]
    dtype: str = "float32"

    @property
    def dynamic_dims(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}


@dataclass
class Parity:
    """Exported runtime vs eager torch on a fixed, seeded input, measured at export time.

    metric: "max_abs" (detector raw outputs), "rel_l2" (encoder embeddings: ||a - b|| / ||b||) or
    "mask_iou" (decoder: min over boxes of the IoU of the thresholded low-res masks; higher is
    better). ``passed`` compares ``value`` to ``tolerance``; ``details`` holds secondary numbers.
    """

    metric: str
    value: float
    tolerance: float
    passed: bool
    reference: str = "torch fp32"
    runtime: str = ""
    details: dict[str, float] = field(default_factory=dict)


@dataclass
class Artefact:
    """One exported file (plus its side files, e.g. ONNX external data) and where it came from."""

    model: str
    format: str
    file: str
    source: str | None
    source_sha256: str | None
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    precision: str = "fp32"
    opset: int | None = None
    device: str = "cpu"
    tool_versions: dict[str, str | None] = field(default_factory=dict)
    parity: Parity | None = None
    data_files: list[str] = field(default_factory=list)
    export_seconds: float | None = None
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        return (self.model, self.format)

    def files(self) -> list[str]:
        return [self.file, *self.data_files]

    def input(self, name: str | None = None, index: int = 0) -> TensorSpec:
        if name is None:
            return self.inputs[index]
        for t in self.inputs:
            if t.name == name:
                return t
        raise KeyError(name)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Artefact:
        d = dict(d)
        d["inputs"] = [TensorSpec(**t) for t in d.get("inputs", [])]
        d["outputs"] = [TensorSpec(**t) for t in d.get("outputs", [])]
        if d.get("parity") is not None:
            d["parity"] = Parity(**d["parity"])
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:  # written by a newer version: keep what we understand
            log.debug("manifest artefact: ignoring unknown keys %s", sorted(unknown))
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class Manifest:
    """The whole ``manifest.json``: artefacts plus when and with what they were made."""

    artefacts: list[Artefact] = field(default_factory=list)
    version: int = MANIFEST_VERSION
    created: str = ""
    tool_versions: dict[str, str | None] = field(default_factory=dict)

    def find(self, model: str, fmt: str) -> Artefact | None:
        for a in self.artefacts:
            if a.model == model and a.format == fmt:
                return a
        return None

    def get(self, model: str, fmt: str, where: Path | str | None = None) -> Artefact:
        """The artefact or a ManifestError that says what is there and how to make the missing one."""
        a = self.find(model, fmt)
        if a is None:
            have = ", ".join(f"{x.model}/{x.format}" for x in self.artefacts) or "nothing"
            raise ManifestError(
                f"{where or 'engines dir'}: no {model} artefact in format {fmt!r} (manifest has {have}); "
                f"export it with: mkgan-engine export --format {fmt} ...")
        return a

    def upsert(self, artefact: Artefact) -> None:
        """Add, replacing an existing artefact for the same (model, format)."""
        self.artefacts = [a for a in self.artefacts if a.key != artefact.key] + [artefact]
        order = {(m, f): i for i, (m, f) in enumerate((m, f) for f in FORMATS for m in MODELS)}
        self.artefacts.sort(key=lambda a: order.get(a.key, 99))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        return cls(
            artefacts=[Artefact.from_dict(a) for a in d.get("artefacts", [])],
            version=int(d.get("version", MANIFEST_VERSION)),
            created=str(d.get("created", "")),
            tool_versions=dict(d.get("tool_versions", {})),
        )

    def validate(self, root: Path | None = None) -> list[str]:
        """Problems found (empty = valid): unknown model/format, bad names, duplicates, missing files."""
        problems: list[str] = []
        if self.version > MANIFEST_VERSION:
            problems.append(f"manifest version {self.version} is newer than this mkgan-engine understands ({MANIFEST_VERSION})")
        seen: set[tuple[str, str]] = set()
        for a in self.artefacts:
            label = f"{a.model}/{a.format}"
            if a.model not in MODELS:
                problems.append(f"{label}: unknown model {a.model!r} (expected one of {', '.join(MODELS)})")
            if a.format not in FORMATS:
                problems.append(f"{label}: unknown format {a.format!r} (expected one of {', '.join(FORMATS)})")
            if a.key in seen:
                problems.append(f"{label}: listed twice")
            seen.add(a.key)
            for name in a.files():
                p = Path(name)
                if p.is_absolute() or ".." in p.parts or not name:
                    problems.append(f"{label}: file name {name!r} must be relative to the engines dir")
                elif root is not None and not (root / p).is_file():
                    problems.append(f"{label}: file {name} is missing from {root}")
            if not a.inputs or not a.outputs:
                problems.append(f"{label}: no input/output tensor specs")
            if a.source_sha256 is not None and len(a.source_sha256) != 64:
                problems.append(f"{label}: source_sha256 is not a sha256 hex digest")
        return problems


# ------------------------------------------------------------------------------------ read/write
def _manifest_path(path: Path | str) -> Path:
    p = Path(path).expanduser()
    return p / MANIFEST_NAME if p.is_dir() or p.suffix != ".json" else p


def read_manifest(path: Path | str, *, validate: bool = True) -> Manifest:
    """Read ``<dir>/manifest.json`` (or the given .json). Raises FileNotFoundError / ManifestError."""
    p = _manifest_path(path)
    root = p.parent
    if not root.exists():
        raise FileNotFoundError(f"engines dir {root} does not exist (write one with: mkgan-engine export -o {root} ...)")
    if not p.is_file():
        raise FileNotFoundError(f"{root}: no {MANIFEST_NAME} (not a directory written by mkgan-engine export)")
    try:
        data = json.loads(p.read_text())
        manifest = Manifest.from_dict(data)
    except (json.JSONDecodeError, TypeError, KeyError, ValueError, AttributeError) as e:
        raise ManifestError(f"{p}: unreadable manifest ({type(e).__name__}: {e}); re-export with mkgan-engine export") from e
    if validate:
        problems = manifest.validate(root)
        if problems:
            raise ManifestError(f"{p}: invalid manifest: " + "; ".join(problems))
    return manifest


def write_manifest(manifest: Manifest, directory: Path | str) -> Path:
    """Write ``<directory>/manifest.json`` atomically (temp file + rename)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    if not manifest.created:
        manifest.created = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    if not manifest.tool_versions:
        manifest.tool_versions = tool_versions()
    fd, tmp = tempfile.mkstemp(prefix=".manifest-", suffix=".json", dir=d)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(manifest.to_dict(), f, indent=2, sort_keys=False)
            f.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, d / MANIFEST_NAME)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return d / MANIFEST_NAME


# ------------------------------------------------------------------------------------ verification
def verify_artefact(
    artefact: Artefact,
    root: Path | str | None = None,
    weights: Path | str | None = None,
    installed: dict[str, str | None] | None = None,
) -> list[str]:
    """Refuse an artefact that does not match this machine or the user's weights.

    Raises :class:`ManifestMismatch` (with what differs and how to fix it) when
    - ``weights`` is given and its sha256 differs from the weights the artefact was exported from;
    - a TensorRT engine was built with another TensorRT major version than the installed one
      (TensorRT plans are not portable across versions; a minor/patch difference is returned as a
      warning and usually fails at deserialisation, which the TensorRT backend reports clearly);
    - an AOTInductor package was compiled with another torch major version (minor differences are
      warnings: .pt2 packages are not guaranteed to load across torch releases);
    - the artefact's files are missing under ``root``.
    Returns the list of warnings (also logged).
    """
    label = f"{artefact.model}/{artefact.format} ({artefact.file})"
    warnings: list[str] = []
    if root is not None:
        for name in artefact.files():
            if not (Path(root) / name).is_file():
                raise ManifestMismatch(f"{label}: file {Path(root) / name} is missing; re-export with mkgan-engine export")
    if weights is not None:
        wpath = Path(weights).expanduser()
        if not wpath.is_file():
            raise FileNotFoundError(f"{wpath}: weights file not found")
        if artefact.source_sha256:
            sha = file_sha256(wpath)
            if sha != artefact.source_sha256:
                raise ManifestMismatch(
                    f"{label} was exported from weights with sha256 {artefact.source_sha256[:12]}... "
                    f"({artefact.source or 'unknown path'}), but {wpath} has sha256 {sha[:12]}...: "
                    f"these are different weights; re-export with: mkgan-engine export ... -o <engines dir>")
        else:
            warnings.append(f"{label}: no source sha256 recorded; cannot check it matches {wpath}")
    installed = tool_versions() if installed is None else installed
    checks = {"engine": ("tensorrt", "TensorRT engines only load with the TensorRT version that built them"),
              "aoti": ("torch", "AOTInductor packages are compiled against one torch release")}
    if artefact.format in checks:
        tool, why = checks[artefact.format]
        built, have = artefact.tool_versions.get(tool), installed.get(tool)
        if have is None:
            raise ManifestMismatch(f"{label} needs {tool} {built or ''} but {tool} is not installed"
                                   + (": pip install mkgan-engine[gpu] on an NVIDIA machine" if tool == "tensorrt" else ""))
        if built is not None and _major(built) != _major(have):
            raise ManifestMismatch(f"{label} was built with {tool} {built} but {tool} {have} is installed ({why}); "
                                   f"re-export on this machine with: mkgan-engine export --format {artefact.format} ...")
        if built is not None and _major_minor(built) != _major_minor(have):
            warnings.append(f"{label} was built with {tool} {built}, {tool} {have} is installed ({why}); "
                            "re-export if it fails to load")
    for w in warnings:
        log.warning(w)
    return warnings


def locate_artefact(engines_dir: Path | str, model: str, fmt: str,
                    weights: Path | str | None = None) -> tuple[Path, Artefact]:
    """(path of the file, artefact) of ``model`` in format ``fmt`` from an engines dir, checked by
    :func:`verify_artefact` against ``weights`` (if given) and the installed tools.

    Raises FileNotFoundError (no dir / manifest), ManifestError (invalid manifest, artefact not
    there) or ManifestMismatch. Every runtime backend loads its files through this.
    """
    root = Path(engines_dir).expanduser()
    artefact = read_manifest(root).get(model, fmt, root)
    verify_artefact(artefact, root, weights)
    return root / artefact.file, artefact


# ------------------------------------------------------------------------------------ listing
def describe_engines(directory: Path | str) -> list[dict[str, Any]]:
    """One row per artefact of an engines dir, for ``mkgan-engine doctor --engines DIR``.

    Row keys: model, format, file, precision, size_mb, parity (text), source, built_with (text),
    problem (None or why it cannot be used here: missing file, tool version mismatch, failed
    parity). Raises FileNotFoundError / ManifestError when the directory or manifest is unusable.
    """
    root = Path(directory).expanduser()
    manifest = read_manifest(root, validate=False)
    installed = tool_versions()
    problems_all = manifest.validate(root)
    rows: list[dict[str, Any]] = []
    for a in manifest.artefacts:
        problem: str | None = next((p for p in problems_all if p.startswith(f"{a.model}/{a.format}:")), None)
        if problem is None:
            try:
                verify_artefact(a, root, installed=installed)
            except ManifestError as e:
                problem = str(e)
        if problem is None and a.parity is not None and not a.parity.passed:
            problem = (f"parity check failed at export: {a.parity.metric} {a.parity.value:.3g} "
                       f"(tolerance {a.parity.tolerance:.3g})")
        size = sum((root / f).stat().st_size for f in a.files() if (root / f).is_file())
        tool = {"engine": "tensorrt", "aoti": "torch", "onnx": "onnx"}.get(a.format, "torch")
        rows.append({
            "model": a.model,
            "format": a.format,
            "file": a.file,
            "precision": a.precision,
            "size_mb": round(size / 1e6, 1),
            "parity": (f"{a.parity.metric}={a.parity.value:.3g} ({'ok' if a.parity.passed else 'FAILED'})"
                       if a.parity else "not measured"),
            "source": a.source,
            "built_with": f"{tool} {a.tool_versions.get(tool) or '?'}" + (f", opset {a.opset}" if a.opset else ""),
            "device": a.device,
            "problem": problem,
        })
    return rows

