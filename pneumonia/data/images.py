"""Decoding chest X-ray files into one-channel uint8 arrays at the training resolution.

Both the cached and the uncached data paths call :func:`load_resized`, so a cache hit and a
fresh decode give byte-identical pixels.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from pneumonia.data.dicom import DicomError, is_dicom, read_dicom_gray
from pneumonia.errors import InputValueError

IMAGE_EXTENSIONS = frozenset({".jpeg", ".jpg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"})
DEFAULT_MAX_PIXELS = 64_000_000  # about 8000 x 8000; the largest Kermany originals are ~7 MP
# Pillow filters for the decode-time resize; Pillow antialiases whenever it downscales.
RESAMPLING = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "lanczos": Image.Resampling.LANCZOS,
    "nearest": Image.Resampling.NEAREST,
}


class BadImageError(InputValueError):
    """A file that is not a readable image within the pixel limit."""


def is_image_file(path: Path) -> bool:
    """An image extension, or DICOM (``.dcm``, or no extension and the DICOM prefix), and
    not a hidden/metadata file (``.DS_Store``, ``._x.jpeg``)."""
    if path.name.startswith("."):
        return False
    return path.suffix.lower() in IMAGE_EXTENSIONS or is_dicom(path)


def allow_pixels(max_pixels: int) -> None:
    """Make ``max_pixels`` the one limit: raise Pillow's own (about 89 MP, refusing above
    twice that) to it where it is lower. Pillow's limit is process-wide and only ever raised
    here, never lowered."""
    if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels


def check_header(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Cheap checks that need no full decode: empty file, unreadable header, pixel bomb.

    Raises:
        BadImageError: with a short reason.
    """
    try:
        size = path.stat().st_size
    except OSError as e:
        raise BadImageError(f"cannot stat file ({e.strerror})") from e
    if size == 0:
        raise BadImageError("empty file (0 bytes)")
    allow_pixels(max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                width, height = im.size
    except Image.DecompressionBombError as e:
        raise BadImageError(
            f"more than twice the pixel limit of {max_pixels:,} (possible decompression bomb; "
            f"raise data.max_pixels if it is real): {e}"
        ) from e
    except Exception as e:  # PIL raises many types for garbage headers
        raise BadImageError(f"not a readable image ({type(e).__name__}: {e})") from e
    if width * height > max_pixels:
        raise BadImageError(
            f"{width}x{height} = {width * height:,} pixels is above the limit of "
            f"{max_pixels:,} (possible decompression bomb; raise data.max_pixels if it is real)"
        )


def _to_gray_uint8(im: Image.Image) -> np.ndarray:
    """Any Pillow mode -> (H, W) uint8 grayscale.

    High-bit-depth images (``I;16``, ``I``, ``F``) are scaled by their container's bit depth,
    inferred from the maximum value (12-bit DICOM exports map to the full 8-bit range), instead
    of Pillow's ``convert("L")`` which clips everything above 255 to white.
    """
    if im.mode in ("L",):
        return np.array(im, dtype=np.uint8)
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        arr = np.array(im).astype(np.float64)
        arr = np.clip(arr, 0, None)
        peak = float(arr.max()) if arr.size else 0.0
        bits = max(8, math.ceil(math.log2(peak + 1))) if peak > 0 else 8
        scaled = np.floor(arr * (255.0 / (2**bits - 1)) + 0.5)
        return np.clip(scaled, 0, 255).astype(np.uint8)
    if im.mode in ("LA", "La"):
        return np.array(im.getchannel("L"), dtype=np.uint8)
    if im.mode in ("RGB", "RGBA", "RGBa", "P", "PA", "1", "CMYK", "YCbCr", "LAB", "HSV"):
        rgb = im.convert("RGB") if im.mode not in ("RGB",) else im
        return np.array(rgb.convert("L"), dtype=np.uint8)
    return np.array(im.convert("RGB").convert("L"), dtype=np.uint8)


def gray_from_image(im: Image.Image) -> np.ndarray:
    """An already opened Pillow image -> (H, W) uint8 gray, as :func:`load_gray` decodes files
    (EXIF orientation, then the gray conversion of :func:`_to_gray_uint8`)."""
    return _to_gray_uint8(ImageOps.exif_transpose(im))


def load_gray(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Fully decode one file to an (H, W) uint8 grayscale array, honouring EXIF orientation.

    DICOM files are read through pydicom (:mod:`pneumonia.data.dicom`): windowed, bone bright.

    Raises:
        BadImageError: truncated, corrupt, empty or oversized files; DICOM without pixels.
    """
    if is_dicom(path):
        try:
            if path.stat().st_size == 0:
                raise BadImageError("empty file (0 bytes)")
            return read_dicom_gray(path, max_pixels)
        except DicomError as e:
            raise BadImageError(str(e)) from e
        except OSError as e:
            raise BadImageError(f"cannot read file ({e.strerror})") from e
    check_header(path, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()  # forces the full decode, so truncated files fail here
                im = ImageOps.exif_transpose(im)
                return _to_gray_uint8(im)
    except BadImageError:
        raise
    except Exception as e:
        raise BadImageError(f"cannot decode ({type(e).__name__}: {e})") from e


def resized_size(width: int, height: int, size: int, mode: str) -> tuple[int, int]:
    """(width, height) of an image after the decode-time resize of ``mode``: ``shorter`` keeps
    the aspect ratio, the shorter side becoming ``size``; ``square`` makes it ``size`` x
    ``size``, as the widely shared 224 x 224 copies of the Kermany set were made."""
    if mode == "square":
        return size, size
    if min(width, height) == size:
        return width, height
    if height <= width:
        return max(1, round(width * size / height)), size
    return size, max(1, round(height * size / width))


def resize(gray: np.ndarray, size: int, interpolation: str, mode: str) -> np.ndarray:
    """(H, W) uint8 -> resized as ``mode`` says (:func:`resized_size`), antialiased when it
    shrinks (Pillow's resize), as ``v2.Resize`` does."""
    h, w = gray.shape
    new_w, new_h = resized_size(w, h, size, mode)
    if (new_h, new_w) == (h, w):
        return np.ascontiguousarray(gray)
    im = Image.fromarray(gray).resize((new_w, new_h), RESAMPLING[interpolation])
    return np.array(im, dtype=np.uint8)


RESIZE_MODES = ("shorter", "square")


def check_size(width: int, height: int, min_side: int) -> None:
    """An image with a side shorter than ``min_side`` (the model's crop) is no X-ray the model
    can read: upscaled, a 1 x 1 file would be trained on as a flat grey field.

    Raises:
        BadImageError: with the size and the limit.
    """
    if min(width, height) < min_side:
        raise BadImageError(
            f"{width}x{height} pixels is smaller than the model's {min_side} x {min_side} crop "
            "(a thumbnail or an icon?)"
        )


def load_resized(
    path: Path, size: int, *, max_pixels: int, interpolation: str, mode: str, min_side: int = 1
) -> np.ndarray:
    """Decode ``path``, check it is at least ``min_side`` pixels a side, and :func:`resize`
    it: (H, W) uint8.

    Pillow's draft mode would let JPEG decode at 1/2..1/8 scale, but would make cached and
    uncached pixels depend on the decoder's scaling: files are decoded at full size.
    """
    gray = load_gray(path, max_pixels)
    check_size(gray.shape[1], gray.shape[0], min_side)
    return resize(gray, size, interpolation, mode)
