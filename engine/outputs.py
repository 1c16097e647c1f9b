"""Where and how one image's outputs are written (every file atomically; the SR image last, so its
presence means the image is complete — what ``--skip-existing`` relies on)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mkgan_engine.config import EngineConfig
from mkgan_engine.imageio import encode_like, write_bytes_atomic, write_image
from mkgan_engine.pipeline import Result


@dataclass(frozen=True)
class OutputPaths:
    """Files for one input. kernels: ``<stem>_kernels.npz``; per-region ``.mat`` files are
    ``<stem>_kernel_<label>.mat`` (x2) and ``<stem>_kernel_<label>_x4.mat`` (x4 runs)."""

    directory: Path
    stem: str
    sr: Path

    @property
    def kernels(self) -> Path:
        return self.directory / f"{self.stem}_kernels.npz"

    def kernel_mat(self, label: int, x4: bool = False) -> Path:
        return self.directory / f"{self.stem}_kernel_{label}{'_x4' if x4 else ''}.mat"

    @property
    def mask(self) -> Path:
        return self.directory / f"{self.stem}_mask.png"

    @property
    def preview(self) -> Path:
        return self.directory / f"{self.stem}_preview.png"


def output_paths(input_path: Path, out_dir: Path, config: EngineConfig, relative_dir: Path = Path()) -> OutputPaths:
    """Outputs of ``input_path`` go to ``out_dir/relative_dir`` (mirrors sub-folders of a directory input).
    ``--ext same`` keeps the input's format where it can be written (else PNG: a GIF gives ``.png``)."""
    from mkgan_engine.imageio import IMAGE_SUFFIXES

    suffix = config.output.suffix.format(scale=config.scale)
    same = input_path.suffix.lower() if input_path.suffix.lower() in IMAGE_SUFFIXES else ".png"
    ext = same if config.output.ext == "same" else f".{config.output.ext}"
    directory = out_dir / relative_dir
    return OutputPaths(directory, input_path.stem, directory / f"{input_path.stem}{suffix}{ext}")


def write_result(result: Result, paths: OutputPaths, config: EngineConfig) -> dict[str, str]:
    """Write what the config asks for; returns {kind: path}. Raises OSError when not writable."""
    from mkgan_engine.train.kernel import save_kernel

    assert result.sr is not None and result.image is not None and result.region_map is not None
    paths.directory.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}
    out = config.output
    if out.save_kernels and result.regions:
        arrays = {f"kernel_{r.label}": r.kernel for r in result.regions}
        arrays.update({f"kernel_{r.label}_x4": r.kernel_x4 for r in result.regions if r.kernel_x4 is not None})
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        write_bytes_atomic(paths.kernels, buffer.getvalue())
        written["kernels"] = str(paths.kernels)
        for r in result.regions:
            save_kernel(paths.kernel_mat(r.label), r.kernel)
            if r.kernel_x4 is not None:
                save_kernel(paths.kernel_mat(r.label, x4=True), r.kernel_x4)
    if out.save_masks:
        labels = result.region_map.labels
        write_image(paths.mask, labels.astype(np.uint16 if labels.max() > 255 else np.uint8))
        written["mask"] = str(paths.mask)
    if out.save_previews:
        from mkgan_engine.preview import render_preview

        write_image(paths.preview, render_preview(result))
        written["preview"] = str(paths.preview)
    write_image(paths.sr, encode_like(result.sr, result.image, result.alpha), jpeg_quality=out.jpeg_quality)
    written["sr"] = str(paths.sr)
    return written
