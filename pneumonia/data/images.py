"""Decoding chest X-ray files into one-channel uint8 arrays at the training resolution.

Both the cached and the uncached data paths call :func:`load_resized`, so a cache hit and a
fresh decode give byte-identical pixels.
"""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from pneumonia.data.dicom import PREAMBLE, DicomError, is_dicom, read_dicom_gray
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


# A file on disk, or the bytes of one held in memory (an upload to pneumonia-serve): both are
# decoded by the same code, so an upload gets the pixels its file would.
Source = Path | bytes


def _size(source: Source) -> int:
    if isinstance(source, bytes):
        return len(source)
    try:
        return source.stat().st_size
    except OSError as e:
        raise BadImageError(f"cannot stat file ({e.strerror})") from e


def _readable(source: Source) -> Path | io.BytesIO:
    return io.BytesIO(source) if isinstance(source, bytes) else source


def _is_dicom(source: Source) -> bool:
    """A DICOM file by name or prefix; bytes by the ``DICM`` prefix alone (an upload's name is
    the client's to choose, and is never trusted)."""
    if isinstance(source, bytes):
        return source[PREAMBLE : PREAMBLE + 4] == b"DICM"
    return is_dicom(source)


def check_header(source: Source, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Cheap checks that need no full decode: empty file, unreadable header, pixel bomb.

    Raises:
        BadImageError: with a short reason.
    """
    if _size(source) == 0:
        raise BadImageError("empty file (0 bytes)")
    allow_pixels(max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(_readable(source)) as im:
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


def load_gray(source: Source, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Fully decode one file (or its bytes) to an (H, W) uint8 grayscale array, honouring EXIF
    orientation.

    DICOM files are read through pydicom (:mod:`pneumonia.data.dicom`): windowed, bone bright.

    Raises:
        BadImageError: truncated, corrupt, empty or oversized files; DICOM without pixels.
    """
    if _is_dicom(source):
        try:
            if _size(source) == 0:
                raise BadImageError("empty file (0 bytes)")
            name = "an uploaded DICOM" if isinstance(source, bytes) else str(source)
            return read_dicom_gray(_readable(source), max_pixels, name=name)
        except DicomError as e:
            raise BadImageError(str(e)) from e
        except OSError as e:
            raise BadImageError(f"cannot read file ({e.strerror})") from e
    check_header(source, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(_readable(source)) as im:
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


# The rule for small images (issue 26). What matters is what the decode-time resize makes of an
# image, not its stored size: 460 x 157 and 461 x 175 chest X-rays of Kermany's training split
# are smaller than a 224 crop, yet resizing their shorter side to 256 enlarges them only 1.6x
# and 1.5x. An image the resize must enlarge much more is mostly pixels the interpolation made
# up (at 4x, each imaged pixel spreads over 16 of the model's): the 1 x 1, 8 x 8 or 32 x 32
# files a thumbnail export or a broken pipeline leaves (256x, 32x, 8x at 256) are refused, while
# a real radiograph half as large as those Kermany ones is not. A data set of legitimately small
# images raises ``data.max_upscale``.
DEFAULT_MAX_UPSCALE = 4.0


def is_upscale_limit(value: object) -> bool:
    """Whether ``value`` can be a ``max_upscale``: a number >= 1 (1: never enlarge)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 1


def upscale_factor(width: int, height: int, size: int) -> float:
    """How much the decode-time resize to ``size`` enlarges an image at most, along either side:
    ``size`` / its shorter side, for both resize modes (``shorter`` scales both sides by it;
    ``square`` scales the shorter side by it and the longer one by less)."""
    return size / min(width, height)


def smallest_side(size: int, max_upscale: float) -> int:
    """The shortest side, in pixels, that ``max_upscale`` accepts at a resize to ``size``."""
    side = max(1, math.ceil(size / max_upscale))
    while side > 1 and size / (side - 1) <= max_upscale:  # float rounding, either way
        side -= 1
    while size / side > max_upscale:
        side += 1
    return side


def check_size(width: int, height: int, *, size: int, mode: str, max_upscale: float) -> None:
    """Refuse an image that the resize to ``size`` (``mode``, see :func:`resized_size`) would
    enlarge more than ``max_upscale`` times along a side (see :data:`DEFAULT_MAX_UPSCALE`).

    Raises:
        BadImageError: with the size, the enlargement, the limit and the setting that moves it.
    """
    if min(width, height) < 1:
        raise BadImageError(f"{width}x{height} pixels: an image without pixels")
    factor = upscale_factor(width, height, size)
    if factor > max_upscale:
        target = f"a shorter side of {size} px" if mode == "shorter" else f"{size} x {size} px"
        times = f"{factor:.2f}" if factor < 10 else f"{factor:.0f}"
        raise BadImageError(
            f"{width}x{height} pixels: resizing it to {target} would enlarge it {times}x, "
            f"more than data.max_upscale={max_upscale:g} allows (a shorter side of at least "
            f"{smallest_side(size, max_upscale)} px): most of what the model would see is "
            "made up by interpolation (a thumbnail or an icon?). If such small images are "
            "real, raise the limit: data.max_upscale=... to train, max_upscale=... to "
            "evaluate or predict"
        )


def load_resized(
    path: Path,
    size: int,
    *,
    max_pixels: int,
    interpolation: str,
    mode: str,
    max_upscale: float = DEFAULT_MAX_UPSCALE,
) -> np.ndarray:
    """Decode ``path``, check the resize would not enlarge it beyond ``max_upscale``
    (:func:`check_size`), and :func:`resize` it: (H, W) uint8.

    Pillow's draft mode would let JPEG decode at 1/2..1/8 scale, but would make cached and
    uncached pixels depend on the decoder's scaling: files are decoded at full size.
    """
    gray = load_gray(path, max_pixels)
    check_size(gray.shape[1], gray.shape[0], size=size, mode=mode, max_upscale=max_upscale)
    return resize(gray, size, interpolation, mode)
