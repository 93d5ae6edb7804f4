"""Image decoding (every Pillow mode), patient ids and the patient-grouped split."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumonia.data.images import BadImageError, load_gray, load_resized
from pneumonia.data.splits import patient_id, patient_split


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("person1_bacteria_1.jpeg", "person1"),
        ("person1946_virus_4874.jpeg", "person1946"),
        ("person447_virus_921_1.jpeg", "person447"),
        ("IM-0115-0001.jpeg", "IM-0115"),
        ("IM-0629-0001-0002.jpeg", "IM-0629"),
        ("NORMAL2-IM-1427-0001.jpeg", "NORMAL2-IM-1427"),
        ("scan_0001.png", "file:scan_0001.png"),
    ],
)
def test_patient_id_from_kermany_names(name: str, expected: str) -> None:
    assert patient_id(Path("x") / name) == expected


def _kermany_like(n_patients: int = 60) -> tuple[list[Path], list[int]]:
    files, labels = [], []
    for p in range(n_patients):
        for k in range(1 + p % 3):
            if p % 3:
                files.append(Path(f"PNEUMONIA/person{p}_bacteria_{k}.jpeg"))
                labels.append(1)
            else:
                files.append(Path(f"NORMAL/IM-{p:04d}-{k + 1:04d}.jpeg"))
                labels.append(0)
    return files, labels


def test_patient_split_keeps_patients_whole_and_is_stratified() -> None:
    files, labels = _kermany_like()
    train, val = patient_split(files, labels, fraction=0.25, seed=3)
    assert sorted(train + val) == list(range(len(files)))
    train_patients = {patient_id(files[i]) for i in train}
    val_patients = {patient_id(files[i]) for i in val}
    assert not train_patients & val_patients
    for cls in (0, 1):
        n_cls = labels.count(cls)
        n_val = sum(labels[i] == cls for i in val)
        assert abs(n_val - 0.25 * n_cls) <= 3  # within one patient's images of the target


def test_patient_split_same_seed_same_split_in_any_order() -> None:
    files, labels = _kermany_like()
    _, val = patient_split(files, labels, fraction=0.2, seed=7)
    order = list(range(len(files)))
    random.Random(0).shuffle(order)
    shuffled_files = [files[i] for i in order]
    shuffled_labels = [labels[i] for i in order]
    _, val_shuffled = patient_split(shuffled_files, shuffled_labels, fraction=0.2, seed=7)
    assert {files[i] for i in val} == {shuffled_files[i] for i in val_shuffled}
    _, val_other_seed = patient_split(files, labels, fraction=0.2, seed=8)
    assert set(val) != set(val_other_seed)


def test_patient_split_rejects_bad_fraction() -> None:
    files, labels = _kermany_like(6)
    with pytest.raises(ValueError, match="val_fraction"):
        patient_split(files, labels, fraction=1.0, seed=0)


GRADIENT = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (48, 1))  # (48, 64) known gray levels


@pytest.mark.parametrize("mode", ["L", "RGB", "LA", "RGBA", "P"])
def test_every_common_mode_loads_as_the_same_gray(tmp_path: Path, mode: str) -> None:
    im = Image.fromarray(GRADIENT)
    if mode != "L":
        im = im.convert(mode)
    path = tmp_path / f"x_{mode}.png"
    im.save(path)
    gray = load_gray(path)
    assert gray.dtype == np.uint8
    assert gray.shape == GRADIENT.shape
    # RGB->L uses the ITU-R 601 weights and P may quantise: allow one gray level.
    assert np.abs(gray.astype(int) - GRADIENT.astype(int)).max() <= 1


def test_16_bit_png_is_scaled_by_bit_depth_not_clipped(tmp_path: Path) -> None:
    twelve_bit = (GRADIENT.astype(np.int64) * 4095 // 252).astype(np.uint16)  # 0..4095
    path = tmp_path / "dicom_export.png"
    Image.fromarray(twelve_bit).save(path)
    assert Image.open(path).mode.startswith("I")
    gray = load_gray(path)
    expected = np.floor(twelve_bit / 4095 * 255 + 0.5)
    assert np.abs(gray.astype(float) - expected).max() <= 1
    assert gray.max() == 255  # Pillow's convert("L") would have clipped most of it to 255
    assert (gray < 128).mean() > 0.3


def test_resize_makes_shorter_side_the_target(tmp_path: Path) -> None:
    path = tmp_path / "wide.png"
    Image.fromarray(np.zeros((50, 120), np.uint8)).save(path)
    assert load_resized(path, 25).shape == (25, 60)


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"", "empty file"), (b"this is text", "not a readable image")],
)
def test_unreadable_files_raise_bad_image(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "bad.jpeg"
    path.write_bytes(content)
    with pytest.raises(BadImageError, match=reason):
        load_gray(path)


def test_truncated_jpeg_raises_bad_image(tmp_path: Path) -> None:
    path = tmp_path / "cut.jpeg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])  # header intact, scan data cut
    with pytest.raises(BadImageError, match="cannot decode"):
        load_gray(path)


def test_pixel_limit_refuses_huge_images(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((100, 100), np.uint8)).save(path)
    with pytest.raises(BadImageError, match="decompression bomb"):
        load_gray(path, max_pixels=5_000)
