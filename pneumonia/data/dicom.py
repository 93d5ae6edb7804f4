"""DICOM files, read through pydicom: pixels as a radiologist's viewer shows them, and the
header's patient, study and acquisition attributes.

Pixels: the modality LUT (rescale slope and intercept), then the VOI LUT or the window centre
and width when the file has them, else the full range of the stored bit depth (a dark image
stays dark); MONOCHROME1 (bone dark) is inverted so that bone is bright, as in MONOCHROME2 and
in every JPEG of the collections. A file without a window whose values fill under an eighth of
that range (signed 16-bit data in a narrow band, 12-bit data in a 16-bit container) would
decode to a band of fewer than 32 grays, on which the model's answer means nothing: it is
decoded over its own range (min to max, what a viewer does without a window) instead, and
a warning names the file and what was assumed. Compressed transfer syntaxes decode through
pydicom's plugins: RLE with NumPy alone, JPEG and JPEG 2000 with the ``dicom`` extra
(``pip install "pneumonia[dicom]"``, pylibjpeg and its codecs); others (MPEG video) have no
decoder, and the message says how to convert them.

No project module is imported here: :mod:`pneumonia.data.images` turns :class:`DicomError`
into its bad-image error.
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

log = logging.getLogger(__name__)

DICOM_EXTENSIONS = frozenset({".dcm", ".dicom"})
PREAMBLE = 128  # bytes before the "DICM" prefix of a DICOM Part 10 file
CODECS_EXTRA = 'pip install "pneumonia[dicom]" (pylibjpeg with its JPEG, JPEG 2000 and RLE codecs)'
# Without a window, values filling less than this share of the stored range decode over their
# own range: the stored range would leave them fewer than 256 / 8 = 32 grays.
NARROW = 1 / 8
# Changes whenever a file's decoded pixels change (the decoded-image cache's key holds it).
DECODE_REVISION = 2
CONVERT = (
    "Convert it to an uncompressed DICOM (gdcmconv --raw in.dcm out.dcm, or DCMTK's dcmdjpeg "
    "for JPEG), or export it uncompressed from its source"
)


class DicomError(ValueError):
    """A DICOM file without usable pixels; the message says why."""


def has_dicom_prefix(path: Path) -> bool:
    """Whether ``path`` starts with the 128-byte preamble and ``DICM`` (a Part 10 file)."""
    try:
        with open(path, "rb") as f:
            head = f.read(PREAMBLE + 4)
    except OSError:
        return False
    return len(head) == PREAMBLE + 4 and head[PREAMBLE:] == b"DICM"


def is_dicom(path: Path) -> bool:
    """A ``.dcm``/``.dicom`` file, or a file without an extension that carries the DICOM
    prefix (as many PACS exports and the RSNA collection's ancestors are)."""
    suffix = path.suffix.lower()
    if suffix in DICOM_EXTENSIONS:
        return True
    return (suffix == "" or suffix[1:].isdigit()) and has_dicom_prefix(path)


def _read(path: Path | BinaryIO, *, pixels: bool) -> Any:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=not pixels, force=not pixels)
    except InvalidDicomError as e:
        raise DicomError(f"not a DICOM file ({e})") from e
    except Exception as e:  # truncated files raise many types
        raise DicomError(f"cannot read the DICOM file ({type(e).__name__}: {e})") from e


def _window(values: np.ndarray, ds: Any) -> np.ndarray | None:
    """The first window of the file as [0, 1] (DICOM PS3.3 C.11.2.1.2), or None without one."""
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None

    def first(v: Any) -> float:
        return float(v[0] if isinstance(v, (list, tuple)) or hasattr(v, "__len__") else v)

    center, width = first(ds.WindowCenter), first(ds.WindowWidth)
    function = str(ds.get("VOILUTFunction", "LINEAR")).upper()
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / max(width, 1e-6)))
    if function == "LINEAR_EXACT":
        return np.clip((values - center) / max(width, 1e-6) + 0.5, 0.0, 1.0)
    width = max(width, 1.0)  # LINEAR: width >= 1 by the standard
    return np.clip((values - (center - 0.5)) / max(width - 1.0, 1e-6) + 0.5, 0.0, 1.0)


def _voi_lut(values: np.ndarray, ds: Any) -> np.ndarray | None:
    """The file's VOI LUT applied to the modality LUT's output, as [0, 1], or None without
    one."""
    if "VOILUTSequence" not in ds or not len(ds.VOILUTSequence):
        return None
    from pydicom.pixels import apply_voi

    item = ds.VOILUTSequence[0]
    bits = int(item.LUTDescriptor[2])
    entries = np.rint(values).astype(np.int64)  # a lookup table is indexed by whole values
    return np.clip(apply_voi(entries, ds).astype(np.float64) / (2**bits - 1), 0.0, 1.0)


def _stored_range(ds: Any) -> tuple[float, float]:
    """The values the stored bit depth allows, after the rescale (the min-max fallback)."""
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)))
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
    ends = sorted((low * slope + intercept, high * slope + intercept))
    return ends[0], ends[1]


def _pixels(ds: Any, max_pixels: int) -> np.ndarray:
    sop = str(ds.get("SOPClassUID", ""))
    if "PixelData" not in ds:
        kind = getattr(ds.get("SOPClassUID"), "name", sop) or "unknown SOP class"
        raise DicomError(f"a DICOM file with no pixel data ({kind}): not an image")
    rows, columns = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    if rows * columns > max_pixels:
        raise DicomError(
            f"{columns}x{rows} = {rows * columns:,} pixels is above the limit of {max_pixels:,} "
            "(raise data.max_pixels if it is real)"
        )
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise DicomError(f"a multi-frame DICOM ({frames} frames): a chest radiograph has one")
    try:
        return ds.pixel_array
    except Exception as e:
        raise DicomError(_undecodable(ds, e)) from e


def _undecodable(ds: Any, error: Exception) -> str:
    """Why the pixels cannot be decoded, and the advice that is true here: the extra only
    where a decoder for the transfer syntax exists and lacks its libraries."""
    from pydicom.pixels import get_decoder

    syntax = ds.file_meta.get("TransferSyntaxUID")
    name = f"{getattr(syntax, 'name', syntax)} ({syntax})"
    try:
        decoder = get_decoder(syntax)
    except (NotImplementedError, ValueError):  # no decoder exists (MPEG, HEVC video ...)
        return f"compressed as {name}, which no DICOM decoder here reads. {CONVERT}."
    installed = ", ".join(decoder.available_plugins) or "none"
    if not decoder.is_available or "missing dependencies" in str(error):
        missing = "; ".join(decoder.missing_dependencies)
        return (
            f"compressed as {name}, and no installed decoder reads it (needs: {missing}): "
            f"{CODECS_EXTRA}. {CONVERT}."
        )
    return (
        f"cannot decode its pixels ({name}, decoders tried: {installed}; "
        f"{type(error).__name__}: {error}). {CONVERT}."
    )


def read_dicom_gray(
    path: Path | BinaryIO, max_pixels: int, *, name: str | None = None
) -> np.ndarray:
    """Decode one DICOM file (or an open binary stream of one) to (H, W) uint8 gray, bone
    bright. ``name`` stands for it in warnings (default: the path); no header text is logged.

    Raises:
        DicomError: not DICOM, no pixel data (a report, a presentation state), several frames,
            over the pixel limit, or compressed with no decoder installed (naming the extra).
    """
    ds = _read(path, pixels=True)
    stored = _pixels(ds, max_pixels)
    interpretation = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if stored.ndim == 3:  # colour (RGB, or YBR converted to RGB by pydicom): luminance
        stored = stored.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        span = 2 ** int(ds.get("BitsStored", 8)) - 1
        return np.clip(np.floor(stored * 255.0 / span + 0.5), 0, 255).astype(np.uint8)
    from pydicom.pixels import apply_modality_lut

    values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    scaled = _voi_lut(values, ds)
    if scaled is None:
        scaled = _window(values, ds)
    if scaled is None:
        scaled = _unwindowed(values, ds, str(path) if name is None else name)
    if interpretation == "MONOCHROME1":
        scaled = 1.0 - scaled
    return np.floor(scaled * 255.0 + 0.5).astype(np.uint8)


def _unwindowed(values: np.ndarray, ds: Any, name: str) -> np.ndarray:
    """[0, 1] without a window: the stored bit depth's range, or the values' own where they
    fill under :data:`NARROW` of it (said in a warning)."""
    low, high = _stored_range(ds)
    least, most = (float(values.min()), float(values.max())) if values.size else (low, high)
    if most > least and (most - least) < NARROW * (high - low):
        bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)))
        kind = "signed" if int(ds.get("PixelRepresentation", 0)) == 1 else "unsigned"
        log.warning(
            "%s has no window (no WindowCenter/WindowWidth, no VOI LUT) and its values "
            "%g..%g fill %.1f%% of the %d-bit %s range %g..%g: decoded over its own range "
            "(%g black, %g white) instead of a band of grays. Check its prediction, or give "
            "the file its window.",
            name, least, most, 100 * (most - least) / (high - low), bits, kind, low, high,
            least, most,
        )  # fmt: skip
        low, high = least, most
    return np.clip((values - low) / max(high - low, 1e-12), 0.0, 1.0)


def age_years(value: object) -> float | None:
    """An age in years from a DICOM age string (``045Y``, ``006M``, ``010W``, ``003D``) or a
    plain number (RSNA's ``51``, NIH's ``058``); None where it is neither."""
    text = str(value).strip().upper()
    per_year = {"Y": 1.0, "M": 12.0, "W": 52.1775, "D": 365.25}
    if len(text) >= 2 and text[-1] in per_year and text[:-1].isdigit():
        return round(int(text[:-1]) / per_year[text[-1]], 2)
    try:
        years = float(text)
    except ValueError:
        return None
    return years if math.isfinite(years) else None


def dicom_attributes(path: Path) -> dict[str, Any]:
    """The header's ``patient_id`` (PatientID), ``study_id`` (StudyInstanceUID), ``sex``,
    ``age`` (years) and ``view`` (ViewPosition); a missing element is None. Pixels are not
    read.

    Raises:
        DicomError: not a DICOM file.
    """
    ds = _read(path, pixels=False)

    def text(keyword: str) -> str | None:
        value = ds.get(keyword)
        return str(value).strip() or None if value is not None else None

    with warnings.catch_warnings():  # RSNA's ages lack their unit ("51"): read as years
        warnings.simplefilter("ignore", UserWarning)
        age = text("PatientAge")
    return {
        "patient_id": text("PatientID"),
        "study_id": text("StudyInstanceUID"),
        "sex": text("PatientSex"),
        "age": age_years(age) if age else None,
        "view": text("ViewPosition"),
    }


__all__ = [
    "CODECS_EXTRA",
    "DECODE_REVISION",
    "DicomError",
    "age_years",
    "dicom_attributes",
    "is_dicom",
    "read_dicom_gray",
]
