"""Reading and writing images without losing what the user gave us.

Any input (8/16-bit, greyscale, RGB, RGBA, EXIF-rotated JPEG) becomes a :class:`LoadedImage`:
float32 RGB in [0, 1] for the algorithms plus what is needed to write the result back in the same
kind (greyscale stays greyscale, alpha is kept, 16-bit stays 16-bit). Writes are atomic.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})  # read and written
READ_SUFFIXES = IMAGE_SUFFIXES | {".gif"}  # read only (a GIF's output is a PNG)

# EXIF orientation -> numpy ops that undo it (rotate counter-clockwise by k*90 after optional flip).
_EXIF_ORIENTATION = {2: (True, 0), 3: (False, 2), 4: (True, 2), 5: (True, 1), 6: (False, 3), 7: (True, 3), 8: (False, 1)}


class ImageReadError(ValueError):
    """The file is missing, empty, corrupt or not an image."""


@dataclass
class LoadedImage:
    """rgb: float32 HxWx3 in [0, 1] (greyscale replicated to 3 channels); alpha: float32 HxW in
    [0, 1] or None; grayscale: the file had one colour channel; bit_depth: 8 or 16."""

    rgb: np.ndarray
    alpha: np.ndarray | None = None
    grayscale: bool = False
    bit_depth: int = 8
    path: Path | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.rgb.shape[:2]  # type: ignore[return-value]


def _exif_orientation(path: Path) -> int:
    try:
        from PIL import Image

        with Image.open(path) as im:
            return int(im.getexif().get(0x0112, 1))
    except Exception:
        return 1


def _check_complete(path: Path) -> None:
    """Raise :class:`ImageReadError` for a truncated or damaged JPEG/PNG. OpenCV decodes those with
    only a library warning on stderr (a grey or partial picture); Pillow, with truncated images not
    allowed (its default), refuses them. Other formats are left to OpenCV."""
    if path.suffix.lower() not in (".jpg", ".jpeg", ".png"):
        return
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(path)
    except UnidentifiedImageError:
        return  # not what its suffix says: OpenCV decides
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageReadError(f"{path}: not a readable image (truncated or damaged file: {error})") from None
    except Exception:  # noqa: BLE001 - e.g. a third-party patch of Image.open failing: OpenCV decides
        return
    with image:
        try:
            image.load()
        except (OSError, SyntaxError, ValueError) as error:
            raise ImageReadError(f"{path}: not a readable image (truncated or damaged file: {error})") from None


def read_image(path: str | os.PathLike[str]) -> LoadedImage:
    """Decode an image file; raises :class:`ImageReadError` with the reason when it cannot."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: empty file")
    _check_complete(path)
    data = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if data is None:
        raise ImageReadError(f"{path}: not a readable image (corrupt or unsupported format)")
    if data.dtype == np.uint8:
        bit_depth, scale = 8, 255.0
    elif data.dtype == np.uint16:
        bit_depth, scale = 16, 65535.0
    elif data.dtype == np.float32:
        bit_depth, scale = 16, 1.0
    else:
        raise ImageReadError(f"{path}: unsupported pixel type {data.dtype}")
    image = data.astype(np.float32) / scale
    if image.ndim == 2:
        image = image[..., None]
    channels = image.shape[2]
    if channels == 1:
        rgb, alpha, grey = np.repeat(image, 3, axis=2), None, True
    elif channels == 2:  # grey + alpha
        rgb, alpha, grey = np.repeat(image[..., :1], 3, axis=2), image[..., 1], True
    elif channels == 3:
        rgb, alpha, grey = image[..., ::-1], None, False
    elif channels == 4:
        rgb, alpha, grey = image[..., 2::-1], image[..., 3], False
    else:
        raise ImageReadError(f"{path}: {channels} channels are not supported")
    flip, turns = _EXIF_ORIENTATION.get(_exif_orientation(path), (False, 0))
    if flip or turns:
        rgb = np.rot90(rgb[:, ::-1] if flip else rgb, turns)
        alpha = None if alpha is None else np.rot90(alpha[:, ::-1] if flip else alpha, turns)
    rgb = np.ascontiguousarray(np.clip(rgb, 0, 1), np.float32)
    alpha = None if alpha is None else np.ascontiguousarray(np.clip(alpha, 0, 1), np.float32)
    return LoadedImage(rgb, alpha, grey, bit_depth, path)


LUMA_WEIGHTS = (0.299, 0.587, 0.114)
"""ITU-R BT.601 luma weights of R, G, B."""


def luma(rgb: np.ndarray, dtype: type[np.floating] = np.float32) -> np.ndarray:
    """...x3 RGB -> ... luma 0.299 R + 0.587 G + 0.114 B (BT.601 weights, no offsets), computed in
    ``dtype`` (float32 by default) in that order; in [0, 1] for RGB in [0, 1] (the weights sum to 1).
    The grey image of the maskers and of colour user masks; the trainers' raw-array entry
    (:func:`mkgan_engine.train.sampler.to_grey`) applies the same weights as a float64 dot product.
    PSNR-Y's :func:`metrics.rgb_to_y` is a different quantity (studio-range Y)."""
    rgb = np.asarray(rgb, dtype)
    if rgb.ndim < 1 or rgb.shape[-1] != 3:
        raise ValueError(f"expected ...x3 RGB, got shape {rgb.shape}")
    wr, wg, wb = LUMA_WEIGHTS
    return rgb[..., 0] * wr + rgb[..., 1] * wg + rgb[..., 2] * wb


def encode_like(rgb: np.ndarray, like: LoadedImage, alpha: np.ndarray | None = None) -> np.ndarray:
    """float32 HxWx3 in [0,1] (+ alpha HxW) -> uint8/uint16 array in the input's kind, BGR(A)/grey
    channel order as cv2 writes it."""
    rgb = np.clip(rgb, 0, 1)
    channels = [rgb.mean(axis=2, keepdims=True)] if like.grayscale else [rgb[..., ::-1]]
    if alpha is not None:
        channels.append(np.clip(alpha, 0, 1)[..., None])
    out = np.concatenate(channels, axis=2)
    if like.bit_depth == 16:
        out = np.round(out * 65535.0).astype(np.uint16)
    else:
        out = np.round(out * 255.0).astype(np.uint8)
    return out[..., 0] if out.shape[2] == 1 else out


def write_image(path: str | os.PathLike[str], array: np.ndarray, jpeg_quality: int = 95) -> None:
    """Write a uint8/uint16 array (grey, BGR or BGRA) atomically: temporary name, then rename.
    ``jpeg_quality`` (1-100) is the JPEG / WebP quality; both formats are written in 8 bits."""
    path = Path(path)
    suffix = path.suffix.lower()
    quality_flag = {".jpg": cv2.IMWRITE_JPEG_QUALITY, ".jpeg": cv2.IMWRITE_JPEG_QUALITY, ".webp": cv2.IMWRITE_WEBP_QUALITY}
    params = [quality_flag[suffix], int(jpeg_quality)] if suffix in quality_flag else []
    if suffix in quality_flag and array.dtype == np.uint16:
        array = (array // 257).astype(np.uint8)
    if suffix in (".jpg", ".jpeg") and array.ndim == 3 and array.shape[2] == 4:
        array = array[..., :3]
    ok, encoded = cv2.imencode(suffix if suffix in IMAGE_SUFFIXES else ".png", array, params)
    if not ok:
        raise OSError(f"could not encode {path.name}")
    write_bytes_atomic(path, encoded.tobytes())


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to a uniquely named temporary file next to ``path`` (``.<name>.<random>.tmp``),
    fsync, then rename it over ``path``: readers see the old file or the new one, never a torn one,
    concurrent writers never share a temporary file, and a failure (full disk) leaves nothing behind."""
    import secrets

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # mode as the umask says, like open()
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
