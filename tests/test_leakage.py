"""Leakage between splits: identical images and shared patients are found, never silent."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pneumonia.data import ChestXRayDataModule, LeakageError
from pneumonia.data.leakage import find_leaks
from pneumonia.data.patients import patient_id


@pytest.fixture
def leaky(tiny_copy: Path) -> tuple[Path, Path, str]:
    """One training image copied into test/ under a name without a patient id, and a new
    test image named after a training patient."""
    copied = sorted((tiny_copy / "train" / "NORMAL").iterdir())[0]
    shutil.copy(copied, tiny_copy / "test" / "NORMAL" / "scan_0001.jpeg")
    patient = patient_id(sorted((tiny_copy / "train" / "PNEUMONIA").iterdir())[0])
    other = sorted((tiny_copy / "test" / "PNEUMONIA").iterdir())[0]
    shutil.copy(other, tiny_copy / "test" / "PNEUMONIA" / f"{patient}_virus_99.jpeg")
    return tiny_copy, copied, patient


def make(root: Path, tmp_path: Path, on_leak: str) -> ChestXRayDataModule:
    return ChestXRayDataModule(
        root, cache_dir=tmp_path / "cache", resize_size=40, crop_size=32, on_leak=on_leak
    )


def test_find_leaks_by_content_and_by_patient(tmp_path: Path) -> None:
    a, b, c = tmp_path / "IM-0001-0001.jpeg", tmp_path / "x.jpeg", tmp_path / "IM-0001-0002.jpeg"
    a.write_bytes(b"same bytes")
    b.write_bytes(b"same bytes")
    c.write_bytes(b"other bytes")
    (leak,) = find_leaks({"train": [a], "test": [b, c]}, [("train", "test")])
    assert leak.duplicates == [(a, b)]
    assert leak.patients == {"IM-0001": ([a], [c])}
    assert leak.files_of_first() == {a}
    (clean,) = find_leaks({"train": [c], "test": [b]}, [("train", "test")])
    assert not clean


def test_leaks_warn_with_counts_and_examples(leaky, tmp_path: Path) -> None:
    root, copied, patient = leaky
    dm = make(root, tmp_path, "warn")
    with pytest.warns(UserWarning, match="both sides of a split") as record:
        dm.setup("fit")
    text = " ".join(str(w.message) for w in record)
    assert copied.name in text
    assert patient in text
    assert sum(entry["identical_images"] for entry in dm.leakage) == 1
    assert sum(entry["shared_patients"] for entry in dm.leakage) == 1


def test_leaks_stop_setup_under_error(leaky, tmp_path: Path) -> None:
    with pytest.raises(LeakageError, match=r"data\.on_leak=drop"):
        make(leaky[0], tmp_path, "error").setup("fit")


def test_leaks_leave_training_under_drop(leaky, tmp_path: Path) -> None:
    root, copied, patient = leaky
    dm = make(root, tmp_path, "drop")
    splits = dm._scan().splits
    pool = splits["train"].files + splits["val"].files
    expected = {copied} | {f for f in pool if patient_id(f) == patient}
    with pytest.warns(UserWarning, match=f"dropped {len(expected)} image"):
        dm.setup("fit")
    kept = dm.files("train") + dm.files("val")
    assert set(kept) == set(pool) - expected


def test_an_unknown_policy_is_refused(tiny_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="warn, error, drop"):
        make(tiny_root, tmp_path, "ignore")
