"""Image decoding: every image the library reads goes through ``load_image``."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ntt.io.inputs import missing_reason

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"}


class ImageLoadError(Exception):
    """An image could not be read; ``str(err)`` names the file and the reason."""


def load_image(path: str | Path) -> np.ndarray:
    """Decode an image file to RGB uint8 (H, W, 3), upright as viewers show it (EXIF orientation applied).

    Grayscale, palette, alpha (dropped), CMYK and 16-bit images (scaled by 255/65535) are converted to 8-bit RGB.

    Raises:
        ImageLoadError: missing, empty, truncated or non-image files, folders, pipes, broken links and symlink
            loops, and images with more pixels than Pillow decodes safely, each with the reason.
    """
    path = _local_path(path)
    with _reading(path):
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            return _to_rgb_array(img)


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Turn every way Pillow fails on a file into one ``ImageLoadError`` that names the file and the reason."""
    try:
        yield
    except Image.DecompressionBombError as err:
        limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        raise ImageLoadError(
            f"{path}: too many pixels to decode safely (the limit is {limit:,} pixels, twice Pillow's "
            f"MAX_IMAGE_PIXELS; {err})"
        ) from err
    except PermissionError as err:
        raise ImageLoadError(f"{path}: permission denied") from err
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as err:
        raise ImageLoadError(f"{path}: not a readable image ({err})") from err


def _local_path(path: str | Path) -> Path:
    """A local regular file that is not empty, or ``ImageLoadError`` saying exactly why not (a folder, a pipe
    that would block the reader, a broken link, a symlink loop, ...)."""
    text = str(path)
    if "://" in text:
        raise ImageLoadError(f"{text}: remote URLs are not supported; download the media to a local path")
    local = Path(text)
    try:
        info = local.stat()  # follows links
    except OSError as err:
        raise ImageLoadError(f"{local}: {missing_reason(local, err)}") from None
    except ValueError as err:  # e.g. a NUL byte in the name
        raise ImageLoadError(f"{text!r}: not a valid path ({err})") from None
    if stat.S_ISDIR(info.st_mode):
        raise ImageLoadError(f"{local}: a directory, not an image file")
    if not stat.S_ISREG(info.st_mode):
        raise ImageLoadError(f"{local}: not a regular file (a pipe, socket or device): not read")
    if info.st_size == 0:
        raise ImageLoadError(f"{local}: empty file")
    return local


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # Integer modes hold 16-bit data (Pillow reads 16-bit PNGs as "I" in some versions): always scale by
        # 255/65535, decided by the mode, never by the values (a dark 16-bit image must stay dark).
        arr = np.asarray(img, dtype=np.float64)
        arr = np.clip(arr / 65535.0 * 255.0, 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        arr = np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if img.mode == "P":
        img = img.convert("RGBA")
    return np.array(img.convert("RGB"), dtype=np.uint8)


def list_images(directory: str | Path) -> list[Path]:
    """Image files (by extension) directly inside ``directory``, sorted by name."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: not a directory")
    return sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


def image_size(path: str | Path) -> tuple[int, int]:
    """(H, W) of an image file as ``load_image`` would return it (EXIF rotation applied), reading its header.

    Raises:
        ImageLoadError: as ``load_image``.
    """
    path = _local_path(path)
    with _reading(path):
        with Image.open(path) as img:
            width, height = img.size
            orientation = img.getexif().get(0x0112, 1)
    # EXIF orientations 5-8 rotate by 90 degrees: width and height swap.
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)
