"""DICOM files the tests write themselves with pydicom: any bit depth, both photometric
interpretations, rescale, window, VOI LUT, RLE compression, and no pixels at all."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    BasicTextSRStorage,
    ComputedRadiographyImageStorage,
    ExplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)


def write_dicom(
    path: Path,
    pixels: np.ndarray | None,
    *,
    bits: int = 12,
    photometric: str = "MONOCHROME2",
    signed: bool = False,
    rescale: tuple[float, float] | None = None,  # (slope, intercept)
    window: tuple[float, float] | None = None,  # (center, width)
    voi_lut: tuple[list[int], int] | None = None,  # (LUT data, first mapped value)
    rle: bool = False,
    preamble: bool = True,
    patient_id: str = "P1",
    sex: str | None = None,
    age: str | None = None,
    view: str | None = None,
    study: str | None = None,
) -> Path:
    """Write ``pixels`` ((H, W) integers) as a DICOM file at ``path``; ``pixels=None`` writes a
    structured report (no pixel data)."""
    meta = FileMetaDataset()
    sop_class = ComputedRadiographyImageStorage if pixels is not None else BasicTextSRStorage
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID = patient_id
    ds.StudyInstanceUID = study or generate_uid()
    ds.Modality = "CR"
    for keyword, value in (("PatientSex", sex), ("PatientAge", age), ("ViewPosition", view)):
        if value is not None:
            with warnings.catch_warnings():  # RSNA's ages ("51") lack the unit AS wants
                warnings.simplefilter("ignore", UserWarning)
                setattr(ds, keyword, value)
    if pixels is not None:
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated = 16 if bits > 8 else 8
        ds.BitsStored = bits
        ds.HighBit = bits - 1
        ds.PixelRepresentation = 1 if signed else 0
        dtype = {(8, False): np.uint8, (16, False): np.uint16, (16, True): np.int16}
        ds.PixelData = pixels.astype(dtype[(ds.BitsAllocated, signed)]).tobytes()
        if rescale is not None:
            ds.RescaleSlope, ds.RescaleIntercept = rescale
        if window is not None:
            ds.WindowCenter, ds.WindowWidth = window
        if voi_lut is not None:
            data, first = voi_lut
            item = Dataset()
            item.LUTDescriptor = [len(data), first, 16]
            item.LUTData = np.asarray(data, dtype=np.uint16).tobytes()
            ds.VOILUTSequence = [item]
        if rle:
            ds.compress(RLELossless)
    ds.save_as(path, enforce_file_format=preamble)
    return path
