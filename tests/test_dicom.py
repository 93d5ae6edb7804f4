"""DICOM: pixels as a viewer shows them (rescale, VOI LUT or window, else the stored range;
MONOCHROME1 inverted), compressed files, header attributes, and files that are no image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from pneumonia.data.dicom import dicom_attributes, is_dicom
from pneumonia.data.images import BadImageError, is_image_file, load_gray
from pneumonia.data.walk import list_images
from tests.dicom_files import write_dicom

RAMP12 = np.tile(np.arange(0, 4096, 16, dtype=np.int64), (8, 1))  # 8 x 256, 0..4080


def by_hand(scaled: np.ndarray) -> np.ndarray:
    return np.floor(np.clip(scaled, 0, 1) * 255 + 0.5).astype(np.uint8)


@pytest.mark.parametrize(("bits", "ramp"), [(12, RAMP12), (16, RAMP12 * 16)])
def test_without_a_window_the_stored_bit_depth_spans_black_to_white(
    tmp_path: Path, bits: int, ramp: np.ndarray
) -> None:
    gray = load_gray(write_dicom(tmp_path / "a.dcm", ramp, bits=bits))
    assert gray.dtype == np.uint8
    np.testing.assert_array_equal(gray, by_hand(ramp / (2**bits - 1)))
    # not the max of the image: a dark image stays dark
    dark = load_gray(write_dicom(tmp_path / "b.dcm", ramp // 4, bits=bits))
    assert dark.max() < 70


def test_monochrome1_is_inverted_so_that_bone_is_bright(tmp_path: Path) -> None:
    mono2 = load_gray(write_dicom(tmp_path / "m2.dcm", RAMP12, photometric="MONOCHROME2"))
    mono1 = load_gray(write_dicom(tmp_path / "m1.dcm", RAMP12, photometric="MONOCHROME1"))
    np.testing.assert_array_equal(mono1.astype(int), 255 - mono2.astype(int))
    assert mono1[0, 0] == 255  # stored 0 is white in MONOCHROME1


def test_rescale_then_window_as_the_standard_defines_it(tmp_path: Path) -> None:
    # CT-like: HU = stored - 1024, a window of 400 around 40
    gray = load_gray(
        write_dicom(tmp_path / "w.dcm", RAMP12, rescale=(1.0, -1024.0), window=(40.0, 400.0))
    )
    hu = RAMP12 - 1024.0
    expected = by_hand((hu - (40 - 0.5)) / (400 - 1) + 0.5)  # PS3.3 C.11.2.1.2.1
    np.testing.assert_array_equal(gray, expected)
    assert gray[0, 0] == 0 and gray[0, -1] == 255  # noqa: PT018 - both ends clip


def test_a_voi_lut_wins_over_the_window(tmp_path: Path) -> None:
    lut = [min(65535, (i * 97) % 65536) for i in range(4096)]  # not a line: a real lookup
    gray = load_gray(
        write_dicom(tmp_path / "v.dcm", RAMP12, voi_lut=(lut, 0), window=(2048.0, 10.0))
    )
    expected = by_hand(np.array(lut)[RAMP12] / 65535)
    np.testing.assert_array_equal(gray, expected)


def test_rle_compressed_pixels_decode_as_the_uncompressed_ones(tmp_path: Path) -> None:
    plain = load_gray(write_dicom(tmp_path / "p.dcm", RAMP12))
    packed_path = write_dicom(tmp_path / "r.dcm", RAMP12, rle=True)
    assert pydicom.dcmread(packed_path).file_meta.TransferSyntaxUID.is_compressed
    np.testing.assert_array_equal(load_gray(packed_path), plain)


def test_a_missing_codec_names_the_extra(tmp_path: Path, monkeypatch) -> None:
    path = write_dicom(tmp_path / "j.dcm", RAMP12, rle=True)

    def no_decoder(self):
        raise RuntimeError(
            "Unable to decompress 'RLE Lossless' pixel data because all plugins are missing "
            "dependencies:\n\tpylibjpeg - requires pylibjpeg and pylibjpeg-rle"
        )

    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(no_decoder))
    with pytest.raises(BadImageError, match=r"RLE Lossless.*pneumonia\[dicom\]"):
        load_gray(path)


def test_a_dicom_without_pixels_or_a_broken_one_is_a_bad_image(tmp_path: Path) -> None:
    with pytest.raises(BadImageError, match="no pixel data.*not an image"):
        load_gray(write_dicom(tmp_path / "report.dcm", None))
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(write_dicom(tmp_path / "whole.dcm", RAMP12).read_bytes()[:400])
    with pytest.raises(BadImageError):
        load_gray(broken)
    (tmp_path / "empty.dcm").write_bytes(b"")
    with pytest.raises(BadImageError, match="empty"):
        load_gray(tmp_path / "empty.dcm")


def test_files_without_an_extension_are_dicom_by_their_prefix(tmp_path: Path) -> None:
    write_dicom(tmp_path / "IMG0001", RAMP12)
    (tmp_path / "README").write_text("not an image")
    (tmp_path / "x.dcm.txt").write_text("DICM")
    assert is_dicom(tmp_path / "IMG0001")
    assert not is_image_file(tmp_path / "README")
    assert list_images(tmp_path) == [tmp_path / "IMG0001"]
    assert load_gray(tmp_path / "IMG0001").shape == RAMP12.shape


def test_the_header_gives_patient_study_sex_age_and_view(tmp_path: Path) -> None:
    path = write_dicom(
        tmp_path / "h.dcm", RAMP12, patient_id="ABC", sex="F", age="045Y", view="PA", study="1.2"
    )
    assert dicom_attributes(path) == {
        "patient_id": "ABC",
        "study_id": "1.2",
        "sex": "F",
        "age": 45.0,
        "view": "PA",
    }
    months = write_dicom(tmp_path / "m.dcm", RAMP12, age="018M")
    assert dicom_attributes(months)["age"] == 1.5
    assert dicom_attributes(months)["view"] is None


def test_jpeg2000_decodes_where_the_codec_is_installed(tmp_path: Path) -> None:
    pytest.importorskip("openjpeg", reason='the dicom extra: pip install "pneumonia[dicom]"')
    from pydicom.uid import JPEG2000Lossless

    ramp = np.tile(RAMP12[:1], (64, 1))  # J2K's default levels need more than 8 rows
    plain_path = write_dicom(tmp_path / "p.dcm", ramp)
    ds = pydicom.dcmread(plain_path)
    ds.compress(JPEG2000Lossless)
    ds.save_as(tmp_path / "j2k.dcm")
    assert pydicom.dcmread(tmp_path / "j2k.dcm").file_meta.TransferSyntaxUID == JPEG2000Lossless
    np.testing.assert_array_equal(load_gray(tmp_path / "j2k.dcm"), load_gray(plain_path))


def test_the_voi_lut_maps_the_rescaled_values(tmp_path: Path) -> None:
    lut = [min(65535, (i * 97) % 65536) for i in range(4096)]
    # rescaled = stored + 100; the LUT's first entry maps the value 100
    gray = load_gray(
        write_dicom(tmp_path / "v.dcm", RAMP12, rescale=(1.0, 100.0), voi_lut=(lut, 100))
    )
    np.testing.assert_array_equal(gray, by_hand(np.array(lut)[RAMP12] / 65535))
