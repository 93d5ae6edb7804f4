"""Bad data gets a clear decision: a dangling link is a bad image like any other (folders,
label files, predict); a DICOM without the window its values need is decoded over its own
range with a warning; an undecodable transfer syntax gets advice that is true."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.encaps import encapsulate
from pydicom.uid import MPEG2MPML

from pneumonia.data import Preprocessing
from pneumonia.data.cache import cache_key
from pneumonia.data.images import BadImageError, load_gray
from pneumonia.data.index import DataIndex
from pneumonia.data.readers import read_table
from pneumonia.data.usable import BadImagesError, usable_images
from tests.collection_copies import HOSPITAL_TABLE, hospital_copy
from tests.dicom_files import write_dicom

PRE = Preprocessing(resize_size=40, crop_size=32)


def _dangle(folder: Path, tmp_path: Path) -> tuple[Path, Path]:
    link, target = folder / "link.jpeg", tmp_path / "moved-away.jpeg"
    os.symlink(target, link)
    return link, target


@pytest.mark.parametrize("cached", [False, True])
def test_a_dangling_link_in_a_folder_is_a_bad_image(tiny_copy: Path, tmp_path: Path, cached):
    link, target = _dangle(tiny_copy / "train" / "NORMAL", tmp_path)
    index = DataIndex.scan(tiny_copy)
    assert link in index.splits["train"].files
    cache = tmp_path / "cache" if cached else None
    with pytest.raises(BadImagesError) as info:  # was a raw FileNotFoundError from the key
        usable_images(index.splits, PRE, cache_dir=cache, policy="error", warn=pytest.fail,
                      where=tiny_copy)  # fmt: skip
    assert f"a broken link: {link} leads to {target}, which does not exist" in str(info.value)
    warnings: list[str] = []
    usable = usable_images(index.splits, PRE, cache_dir=cache, policy="skip",
                           warn=warnings.append, where=tiny_copy)  # fmt: skip
    assert link not in usable.listings["train"].files
    assert len(usable.listings["train"].files) == len(index.splits["train"].files) - 1
    assert list(usable.skipped) == [str(target)]
    assert "Skipping 1 unusable image files" in warnings[0]


def test_the_cache_key_of_a_file_that_went_missing_is_not_a_crash(tmp_path: Path) -> None:
    link, _ = _dangle(tmp_path, tmp_path)
    assert cache_key([link], {"resize_size": 40}) != cache_key([], {"resize_size": 40})


@pytest.mark.filterwarnings("ignore:Skipping 1 unusable:UserWarning")
def test_a_dangling_link_in_a_label_file_is_a_bad_image_not_a_missing_row(tmp_path: Path):
    root = hospital_copy(tmp_path / "hospital")
    png = next((root / "export").rglob("img1.png"))
    png.rename(tmp_path / "elsewhere.png")
    os.symlink(tmp_path / "gone.png", png)  # the row's path is now a link to nothing
    table = read_table(root, HOSPITAL_TABLE)  # the row check leaves it to on_bad_image
    from pneumonia.data import ChestXRayDataModule

    dm = ChestXRayDataModule(root, table=HOSPITAL_TABLE, cache_dir=tmp_path / "cache",
                             resize_size=40, crop_size=32, num_workers=0,
                             on_bad_image="skip")  # fmt: skip
    dm.setup("fit")
    assert str(tmp_path / "gone.png") in dm.skipped
    kept = len(dm.files("train")) + len(dm.files("val"))
    assert kept == len(table) - 1
    error = ChestXRayDataModule(root, table=HOSPITAL_TABLE, cache_dir=tmp_path / "cache",
                                resize_size=40, crop_size=32, num_workers=0)  # fmt: skip
    with pytest.raises(BadImagesError, match=rf"broken link: {png} leads to"):
        error.setup("fit")


def test_predict_gives_a_dangling_link_an_error_row(trained: dict, tmp_path: Path) -> None:
    from pneumonia.data.walk import list_images
    from pneumonia.inference.runner import predict_files
    from pneumonia.models.checkpoint import load_checkpoint

    folder = tmp_path / "incoming"
    folder.mkdir()
    good = next((trained["root"] / "test" / "NORMAL").glob("*.jpeg"))
    (folder / "good.jpeg").write_bytes(good.read_bytes())
    link, target = _dangle(folder, tmp_path)
    rows = predict_files(load_checkpoint(trained["ckpt"]), list_images(folder),
                         device=torch.device("cpu"), precision="32-true")  # fmt: skip
    by_name = {Path(r["file"]).name: r for r in rows}
    assert by_name["link.jpeg"]["probability"] is None
    assert f"leads to {target}, which does not exist" in by_name["link.jpeg"]["error"]
    assert by_name["good.jpeg"]["error"] == ""


def test_a_narrow_signed_dicom_without_a_window_is_stretched_and_warned(tmp_path: Path, caplog):
    """Signed 16-bit values in -1000..1000, no window: the stored range gave grays 124-140."""
    ramp = np.tile(np.linspace(-1000, 1000, 256).astype(np.int64), (8, 1))
    path = write_dicom(tmp_path / "narrow.dcm", ramp, bits=16, signed=True)
    with caplog.at_level(logging.WARNING, logger="pneumonia.data.dicom"):
        gray = load_gray(path)
    assert (int(gray.min()), int(gray.max())) == (0, 255)  # not a band of 16 grays
    assert np.all(np.diff(gray[0].astype(int)) >= 0)  # the order of the values kept
    assert str(path) in caplog.text
    assert "has no window" in caplog.text
    assert "decoded over its own range (-1000 black, 1000 white)" in caplog.text


def test_a_dark_dicom_without_a_window_stays_dark_and_quiet(tmp_path: Path, caplog) -> None:
    ramp = np.tile(np.arange(0, 1024, 4, dtype=np.int64), (8, 1))  # a quarter of 12 bits
    with caplog.at_level(logging.WARNING, logger="pneumonia.data.dicom"):
        gray = load_gray(write_dicom(tmp_path / "dark.dcm", ramp, bits=12))
    assert gray.max() < 70
    assert "has no window" not in caplog.text


def test_an_mpeg2_dicom_names_its_syntax_and_how_to_convert_it(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "video.dcm", np.zeros((8, 8), dtype=np.int64))
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\x00" * 60])
    ds.save_as(path)
    with pytest.raises(BadImageError) as info:
        load_gray(path)
    message = str(info.value)
    assert "MPEG2 Main Profile / Main Level (1.2.840.10008.1.2.4.100)" in message
    assert "gdcmconv --raw" in message
    assert "pip install" not in message  # the extra is no help for MPEG2
