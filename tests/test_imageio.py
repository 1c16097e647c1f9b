"""Image I/O keeps what the user gave: grey, alpha, 16-bit, EXIF orientation; clear errors."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from mkgan_engine.imageio import ImageReadError, encode_like, read_image, write_image


def test_grey_rgba_16bit_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    grey = (rng.random((20, 30)) * 255).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "g.png"), grey)
    loaded = read_image(tmp_path / "g.png")
    assert loaded.grayscale and loaded.rgb.shape == (20, 30, 3) and loaded.bit_depth == 8
    np.testing.assert_array_equal(encode_like(loaded.rgb, loaded), grey)

    bgra = (rng.random((20, 30, 4)) * 65535).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "a.png"), bgra)
    loaded = read_image(tmp_path / "a.png")
    assert loaded.bit_depth == 16 and loaded.alpha is not None and not loaded.grayscale
    np.testing.assert_allclose(loaded.rgb[..., 0], bgra[..., 2] / 65535.0, atol=1e-6)
    out = encode_like(loaded.rgb, loaded, loaded.alpha)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, bgra)


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((10, 20, 3), np.uint8)
    pixels[:, :5] = 255  # bright left band
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # stored rotated: display needs a 90-degree clockwise turn
    image.save(tmp_path / "r.jpg", exif=exif, quality=100)
    loaded = read_image(tmp_path / "r.jpg")
    assert loaded.shape == (20, 10)
    assert loaded.rgb[:5].mean() > 0.9 and loaded.rgb[-5:].mean() < 0.1  # band now on top


@pytest.mark.parametrize("content, message", [(b"", "empty file"), (b"not an image at all", "not a readable image")])
def test_bad_files_raise_clear_errors(tmp_path, content, message):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ImageReadError, match=message):
        read_image(path)


def test_write_is_atomic_and_leaves_no_temporary(tmp_path):
    write_image(tmp_path / "x.png", np.zeros((4, 4, 3), np.uint8))
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]
