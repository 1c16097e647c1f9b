"""C++/CUDA extensions, JIT-built on first use.

:func:`load_masked_crop` builds ``masked_crop.cpp`` (CPU, always) and ``masked_crop_cuda.cu``
(only when CUDA is usable and a CUDA toolchain is found) with
:func:`torch.utils.cpp_extension.load`, once per process, into torch's per-user extension cache
(``$TORCH_EXTENSIONS_DIR`` or ``~/.cache/torch_extensions/<py>_<cu>/``; later processes reuse the
build). It returns a callable with the signature of
:func:`mkgan_engine.train.masked_crop.gather_crops_reference`, or ``None`` - after logging one line
that says why - when the op cannot be built; callers then use the pure-PyTorch reference.

Environment:

``MKGAN_DISABLE_CPP_EXT=1``
    never build; always use the pure-PyTorch fallback.
``MKGAN_CPP_EXT_CUDA=auto|0|1``
    ``auto`` (default): compile the CUDA kernels when ``torch.cuda.is_available()`` and nvcc is
    found; ``0``: CPU-only build; ``1``: compile the CUDA kernels whenever a CUDA toolchain is
    found, even without a GPU (pre-building a cache, compile checks).
``TORCH_EXTENSIONS_DIR``, ``MAX_JOBS``, ``CXX``, ``CUDA_HOME``, ``TORCH_CUDA_ARCH_LIST``
    honoured as by torch.

Importing this module is cheap: nothing is compiled (nor is torch.utils.cpp_extension imported)
until :func:`load_masked_crop` or ``masked_crop_status(build=True)`` is called.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

log = logging.getLogger(__name__)

DISABLE_ENV = "MKGAN_DISABLE_CPP_EXT"
CUDA_ENV = "MKGAN_CPP_EXT_CUDA"
_SOURCE_DIR = Path(__file__).resolve().parent
_CPU_SOURCES = ("masked_crop.cpp",)
_CUDA_SOURCES = ("masked_crop_cuda.cu",)
_HEADERS = ("masked_crop.h",)

__all__ = ["load_masked_crop", "masked_crop_status", "DISABLE_ENV", "CUDA_ENV"]


@dataclass
class _LoadState:
    """Outcome of the (single) build attempt of this process."""

    op: Optional[Callable] = None
    backend: str = "pytorch"  # "cpp-cuda" (CPU + CUDA kernels), "cpp-cpu", or "pytorch" (fallback)
    reason: Optional[str] = None  # why the fallback is used (None when built)
    name: Optional[str] = None
    build_dir: Optional[str] = None
    extra: dict[str, Any] = field(default_factory=dict)


_state: Optional[_LoadState] = None
_lock = threading.Lock()
_logged: set[str] = set()


def _truthy(value: Optional[str]) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def _disabled_reason() -> Optional[str]:
    if _truthy(os.environ.get(DISABLE_ENV)):
        return f"disabled by {DISABLE_ENV}={os.environ.get(DISABLE_ENV)}"
    return None


def _log_once(level: int, message: str) -> None:
    if message not in _logged:
        _logged.add(message)
        log.log(level, message)


def _fallback_line(reason: str) -> str:
    return f"masked-crop C++/CUDA extension not used ({reason}); using the pure-PyTorch fallback"


def _cxx_compiler() -> Optional[str]:
    """Path of the C++ compiler torch would use (``$CXX`` or ``c++``), or None."""
    compiler = os.environ.get("CXX", "c++")
    return shutil.which(compiler)


def _nvcc(cuda_home: Optional[str]) -> Optional[str]:
    if cuda_home:
        candidate = Path(cuda_home) / "bin" / "nvcc"
        if candidate.exists():
            return str(candidate)
    return shutil.which("nvcc")


def _cpp_extension():
    """torch.utils.cpp_extension, imported without its "No CUDA runtime is found" warning (it
    guesses CUDA_HOME at import; whether CUDA is used is decided and reported here instead)."""
    import sys

    if "torch.utils.cpp_extension" in sys.modules:
        return sys.modules["torch.utils.cpp_extension"]
    torch_log = logging.getLogger("torch.utils.cpp_extension")
    level = torch_log.level
    torch_log.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        torch_log.setLevel(level)
    return cpp_extension


def _want_cuda() -> tuple[bool, str]:
    """(compile the CUDA kernels?, a note for the status)."""
    import torch

    mode = (os.environ.get(CUDA_ENV) or "auto").strip().lower()
    if mode in {"0", "false", "no", "off"}:
        return False, f"CUDA kernels off ({CUDA_ENV}={mode})"
    if torch.version.cuda is None:
        return False, "torch has no CUDA support"
    if mode not in {"1", "true", "yes", "on"} and not torch.cuda.is_available():
        return False, "no CUDA device"
    cuda_home = _usable_cuda_home()
    nvcc = _nvcc(cuda_home)
    if cuda_home is None or nvcc is None:
        return False, "no CUDA toolchain (nvcc with include/cuda_runtime.h; set CUDA_HOME) found: CPU-only build"
    return True, f"nvcc {nvcc} (CUDA_HOME={cuda_home})"


def _usable_cuda_home() -> Optional[str]:
    """A CUDA toolkit root with nvcc and include/cuda_runtime.h, as torch.utils.cpp_extension uses it.

    torch guesses CUDA_HOME once at import (``$CUDA_HOME``, else the parent of the nvcc on PATH,
    else /usr/local/cuda); an nvcc wrapper script in /usr/local/bin makes that guess /usr/local,
    which has no CUDA headers. Only in that case the next candidate that has them is put in
    ``torch.utils.cpp_extension.CUDA_HOME`` (used for the include/library paths and nvcc).
    """
    cpp_extension = _cpp_extension()

    def ok(home: Optional[str]) -> bool:
        return bool(home) and (Path(home) / "include" / "cuda_runtime.h").exists() and \
            (Path(home) / "bin" / "nvcc").exists()

    if ok(cpp_extension.CUDA_HOME):
        return cpp_extension.CUDA_HOME
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(str(Path(os.path.realpath(nvcc)).parent.parent))
    for home in candidates:
        if ok(home):
            log.debug("CUDA_HOME %s has no CUDA headers; using %s", cpp_extension.CUDA_HOME, home)
            cpp_extension.CUDA_HOME = home
            return home
    return None


def _cuda_extra_include_dirs(cuda_home: Optional[str]) -> list[str]:
    """Header folders of the pip CUDA wheels (nvidia/*/include) when the toolkit lacks the CUDA
    library headers that ATen's CUDA headers include (cusparse.h, cublas_v2.h, ...).

    They are added with -idirafter, i.e. searched only for headers not found elsewhere.
    """
    if cuda_home and (Path(cuda_home) / "include" / "cusparse.h").exists():
        return []
    import importlib.util

    try:
        spec = importlib.util.find_spec("nvidia")
    except (ImportError, ValueError):
        return []
    dirs: list[str] = []
    for root in (spec.submodule_search_locations or []) if spec else []:
        for header in sorted(Path(root).glob("*/include/cusparse.h")):
            folder = str(header.parent)
            if " " not in folder and folder not in dirs:
                dirs.append(folder)
    return dirs


def _extension_name(with_cuda: bool) -> str:
    """Build name, distinct per torch installation: two environments of the same user (a venv and
    a system Python, say) share torch's cache folder and would otherwise rebuild over each other."""
    import hashlib
    import sys

    import torch

    version = re.sub(r"\W", "_", torch.__version__)
    where = hashlib.sha1(f"{Path(torch.__file__).resolve().parent}|{sys.version}".encode()).hexdigest()[:8]
    return f"mkgan_masked_crop_{'cuda' if with_cuda else 'cpu'}_t{version}_{where}"


def _sources_hash() -> str:
    import hashlib

    digest = hashlib.sha1()
    for name in _CPU_SOURCES + _CUDA_SOURCES + _HEADERS:
        digest.update((_SOURCE_DIR / name).read_bytes())
    return digest.hexdigest()[:12]


def _build(with_cuda: bool) -> Any:
    """Compile (or reuse the cached build of) the extension module."""
    cpp_extension = _cpp_extension()
    sources = [str(_SOURCE_DIR / s) for s in _CPU_SOURCES]
    # torch rebuilds when the sources or flags change; the hash also covers the header.
    digest = f"-DMKGAN_SOURCES_HASH={_sources_hash()}"
    cflags = ["-O3", digest]
    cuda_cflags = ["-O3", digest]
    if with_cuda:
        sources += [str(_SOURCE_DIR / s) for s in _CUDA_SOURCES]
        cflags.append("-DMKGAN_WITH_CUDA")
        cuda_cflags.append("-DMKGAN_WITH_CUDA")
        for folder in _cuda_extra_include_dirs(cpp_extension.CUDA_HOME):
            cflags.append(f"-idirafter{folder}")
            cuda_cflags += ["-Xcompiler", f"-idirafter{folder}"]
    return cpp_extension.load(
        name=_extension_name(with_cuda),
        sources=sources,
        extra_cflags=cflags,
        extra_cuda_cflags=cuda_cflags if with_cuda else None,
        extra_include_paths=[str(_SOURCE_DIR)],
        with_cuda=with_cuda,
        verbose=False,
    )


def _short(error: BaseException) -> str:
    """One line out of a (possibly multi-page) build error: its first line and first compiler error."""
    text = str(error).strip() or type(error).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first = lines[0] if lines else ""
    if len(first) > 160:
        first = first[:157] + "..."
    line = f"{type(error).__name__}: {first}"
    errors = [ln for ln in lines[1:] if "error" in ln.lower()]
    if errors:
        line += f" | {errors[0][:200]}"
    return line


def _make_op(module: Any, with_cuda: bool) -> Callable:
    from mkgan_engine.train.masked_crop import gather_crops_reference

    def masked_crop(images, cdf, uniforms, crop_size: int):
        """Compiled masked crop (same arguments and results as gather_crops_reference).

        Tensors on a device this build does not cover (e.g. CUDA with a CPU-only build, MPS) go
        to the pure-PyTorch reference.
        """
        device = images.device.type
        if device == "cpu" or (device == "cuda" and with_cuda):
            crops, centres = module.masked_crop(images, cdf, uniforms, int(crop_size))
            return crops, centres
        return gather_crops_reference(images, cdf, uniforms, crop_size)

    masked_crop.module = module  # type: ignore[attr-defined]
    masked_crop.with_cuda = with_cuda  # type: ignore[attr-defined]
    return masked_crop


def _try_load() -> _LoadState:
    try:
        cpp_extension = _cpp_extension()
    except Exception as error:  # noqa: BLE001
        return _LoadState(reason=f"torch.utils.cpp_extension unavailable: {_short(error)}")
    compiler = _cxx_compiler()
    if compiler is None:
        return _LoadState(reason=f"no C++ compiler found ({os.environ.get('CXX', 'c++')!r} not on PATH; set CXX)")
    if not cpp_extension.is_ninja_available():
        return _LoadState(reason="ninja not found (pip install ninja)")
    try:
        with_cuda, cuda_note = _want_cuda()
    except Exception as error:  # noqa: BLE001
        with_cuda, cuda_note = False, f"CUDA check failed: {_short(error)}"
    name = _extension_name(with_cuda)
    extra = {"compiler": compiler, "cuda": cuda_note}
    try:
        module = _build(with_cuda)
    except Exception as error:  # noqa: BLE001 - any build/load failure means: use the fallback
        log.debug("masked-crop extension build failed", exc_info=True)
        if not with_cuda:
            return _LoadState(reason=f"build failed: {_short(error)}", name=name, extra=extra)
        # The CUDA kernels did not build: the CPU op is still worth having.
        cuda_error = _short(error)
        extra["cuda"] = f"CUDA kernels failed to build ({cuda_error}); CUDA tensors use the PyTorch fallback"
        name = _extension_name(False)
        try:
            module = _build(False)
        except Exception as error2:  # noqa: BLE001
            log.debug("masked-crop CPU-only build failed", exc_info=True)
            return _LoadState(reason=f"build failed: {_short(error2)} (CUDA build: {cuda_error})", name=name,
                              extra=extra)
        _log_once(logging.WARNING, f"masked-crop CUDA kernels failed to build ({cuda_error}); CPU op built, "
                                   "CUDA tensors use the pure-PyTorch fallback")
    built_cuda = bool(module.with_cuda())
    build_dir = None
    try:
        build_dir = str(Path(module.__file__).resolve().parent)
    except Exception:  # noqa: BLE001
        pass
    return _LoadState(op=_make_op(module, built_cuda), backend="cpp-cuda" if built_cuda else "cpp-cpu",
                      name=name, build_dir=build_dir, extra=extra)


def load_masked_crop() -> Optional[Callable]:
    """The compiled masked-crop op, built on first use; None means: use the PyTorch reference.

    Returns ``op(images, cdf, uniforms, crop_size) -> (crops, centres)`` with the semantics of
    :func:`mkgan_engine.train.masked_crop.gather_crops_reference`. The first call in a process
    compiles (about a minute on a small CPU; later processes reuse the per-user cache); the
    result is memoised. When the extension is disabled (``MKGAN_DISABLE_CPP_EXT=1``), no
    compiler/ninja is found or the build fails, one line is logged (logger
    ``mkgan_engine.cpp_ext``) and None is returned.
    """
    global _state
    reason = _disabled_reason()
    if reason is not None:
        _log_once(logging.INFO, _fallback_line(reason))
        return None
    state = _state
    if state is None:
        with _lock:
            if _state is None:
                _state = _try_load()
                if _state.op is None:
                    _log_once(logging.WARNING, _fallback_line(_state.reason or "unknown reason"))
                else:
                    log.debug("masked-crop extension ready: %s (%s)", _state.backend, _state.build_dir)
            state = _state
    return state.op


def masked_crop_status(build: bool = False) -> dict[str, Any]:
    """Where the masked-crop op stands, for ``mkgan-engine doctor`` and reports.

    build: attempt the build now if it has not been attempted in this process (else report
    "not built yet"). Keys: ``built`` (bool), ``backend`` ("cpp-cuda", "cpp-cpu" or "pytorch"),
    ``reason`` (why the fallback is used, or None), ``detail`` (one human-readable line),
    ``attempted`` (bool), ``name`` and ``build_dir`` (extension name and cache folder, when known).
    """
    disabled = _disabled_reason()
    if build and disabled is None:
        load_masked_crop()
    state = _state
    if disabled is not None:
        status = {"built": False, "backend": "pytorch", "reason": disabled, "attempted": state is not None,
                  "name": None, "build_dir": None}
    elif state is None:
        status = {"built": False, "backend": "pytorch", "reason": "not built yet (builds on first use)",
                  "attempted": False, "name": None, "build_dir": None}
    else:
        status = {"built": state.op is not None, "backend": state.backend, "reason": state.reason,
                  "attempted": True, "name": state.name, "build_dir": state.build_dir, **state.extra}
    if status["built"]:
        kind = "CPU + CUDA kernels" if status["backend"] == "cpp-cuda" else "CPU only"
        status["detail"] = f"built ({kind}); cache {status['build_dir']}"
    else:
        status["detail"] = f"pure-PyTorch fallback: {status['reason']}"
    return status
