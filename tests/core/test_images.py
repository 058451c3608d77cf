"""Every image a user can have: odd modes decode to RGB uint8, broken files give a reason, not a crash."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from ntt.io.images import ImageLoadError, image_size, load_image


def _save(path, img, **kw):
    img.save(path, **kw)
    return path


@pytest.fixture
def odd_images(tmp_path):
    """Readable files in unusual modes, with the (H, W) load_image must return."""
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8))
    rgba = rgb.convert("RGBA")
    rgba.putalpha(0)
    pal = rgb.convert("P", palette=Image.ADAPTIVE)
    pal.info["transparency"] = 0
    g16 = Image.fromarray(np.arange(600, dtype=np.uint16).reshape(20, 30) * 100)
    assert g16.mode == "I;16"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    files = {
        "gray.png": (_save(tmp_path / "gray.png", rgb.convert("L")), (20, 30)),
        "la.png": (_save(tmp_path / "la.png", rgb.convert("LA")), (20, 30)),
        "rgba.png": (_save(tmp_path / "rgba.png", rgba), (20, 30)),
        "palette.png": (_save(tmp_path / "palette.png", pal), (20, 30)),
        "cmyk.jpg": (_save(tmp_path / "cmyk.jpg", rgb.convert("CMYK")), (20, 30)),
        "gray16.png": (_save(tmp_path / "gray16.png", g16), (20, 30)),
        "gray16.tif": (_save(tmp_path / "gray16.tif", g16), (20, 30)),
        "exif6.jpg": (_save(tmp_path / "exif6.jpg", rgb, exif=exif), (30, 20)),
        "one.png": (_save(tmp_path / "one.png", Image.new("RGB", (1, 1), (9, 9, 9))), (1, 1)),
        "thin.png": (_save(tmp_path / "thin.png", Image.new("RGB", (500, 2), (1, 2, 3))), (2, 500)),
    }
    return files


def test_odd_modes_decode_to_rgb_uint8(odd_images):
    for name, (path, size) in odd_images.items():
        arr = load_image(path)
        assert arr.dtype == np.uint8 and arr.shape == (*size, 3), name
        assert image_size(path) == size, name
        assert arr.flags.writeable, name


def test_sixteen_bit_keeps_its_dynamic_range(odd_images):
    arr = load_image(odd_images["gray16.png"][0])
    # 0..59900 of the 16-bit range map to 0..233: scaled by 255/65535, neither clipped nor stretched.
    assert arr.min() == 0 and arr.max() == int(59900 / 65535 * 255)
    assert np.array_equal(arr[..., 0], arr[..., 2])


@pytest.mark.parametrize("suffix", ["png", "tif"])
def test_dark_sixteen_bit_image_is_scaled_as_sixteen_bit(tmp_path, suffix):
    # Every value fits in 8 bits, but the file is 16-bit: 0..200 of 65535 is nearly black, not 0..200 of 255.
    g16 = Image.fromarray(np.linspace(0, 200, 600).astype(np.uint16).reshape(20, 30))
    arr = load_image(_save(tmp_path / f"dark16.{suffix}", g16))
    assert arr.max() == 0


def test_exif_rotation_is_applied(tmp_path):
    img = np.zeros((10, 40, 3), np.uint8)
    img[:, :5] = 255  # a white stripe on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise: the stripe goes to the top
    Image.fromarray(img).save(tmp_path / "r.jpg", exif=exif, quality=100)
    arr = load_image(tmp_path / "r.jpg")
    assert arr.shape == (40, 10, 3)
    assert arr[:4].mean() > 200 and arr[10:].mean() < 30


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def _truncated(tmp_path):
    full = tmp_path / "full.jpg"
    Image.new("RGB", (64, 64), (200, 10, 10)).save(full)
    cut = tmp_path / "truncated.jpg"
    cut.write_bytes(full.read_bytes()[:300])
    return cut


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda d: d / "missing.jpg", "file not found"),
        (lambda d: _write(d / "empty.jpg", b""), "empty file"),
        (lambda d: _write(d / "text.jpg", b"hello"), "not a readable image"),
        (_truncated, "not a readable image"),
        (lambda d: "https://example.com/cat.jpg", "remote URL"),
        (lambda d: "s3://bucket/cat.jpg", "remote URL"),
    ],
)
def test_unreadable_inputs_raise_with_a_reason(tmp_path, make, reason):
    path = make(tmp_path)
    with pytest.raises(ImageLoadError, match=reason):
        load_image(path)
    with pytest.raises(ImageLoadError, match=reason):
        image_size(path)


def test_decompression_bomb_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    path = _save(tmp_path / "big.png", Image.new("RGB", (30, 30)))
    with pytest.raises(ImageLoadError, match="pixels"):
        load_image(path)


def _fifo(d):
    import os

    os.mkfifo(d / "pipe.jpg")
    return d / "pipe.jpg"


def _loop(d):
    (d / "loop.jpg").symlink_to("loop.jpg")
    return d / "loop.jpg"


def _broken(d):
    (d / "broken.jpg").symlink_to(d / "gone.jpg")
    return d / "broken.jpg"


def _folder(d):
    (d / "dir.jpg").mkdir()
    return d / "dir.jpg"


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (_folder, "a directory, not an image file"),
        (_loop, "symlink loop"),
        (_broken, "broken symlink (it points to"),
        (_fifo, "not a regular file"),  # never opened: reading a pipe would block the run
        (lambda d: d / "missing.jpg", "file not found"),
        (lambda d: _write(d / "file.jpg", b"x") / "below.jpg", "a part of the path is a file"),
    ],
)
def test_what_is_not_an_image_file_says_what_it_is(tmp_path, make, reason):
    path = make(tmp_path)
    for read in (load_image, image_size):
        with pytest.raises(ImageLoadError, match=re.escape(reason)) as err:
            read(path)
        assert str(err.value).startswith(str(path))


def test_a_decompression_bomb_names_the_limit_when_only_its_size_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    path = _save(tmp_path / "big.png", Image.new("RGB", (30, 30)))
    for read in (load_image, image_size):
        with pytest.raises(ImageLoadError, match="the limit is 200 pixels"):
            read(path)
