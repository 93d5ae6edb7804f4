"""Patient ids from Kermany file names and the patient-grouped, stratified split."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from pneumonia.data.patients import patient_id
from pneumonia.data.splits import patient_split


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


def test_patient_folds_cover_every_patient_once_stratified_and_seeded() -> None:
    from collections import Counter

    from pneumonia.data.splits import patient_folds

    files, labels = _kermany_like()
    patients = [patient_id(f) for f in files]
    fold_of = patient_folds(labels, patients, folds=5, seed=3)
    per_patient = {}
    for p, f in zip(patients, fold_of, strict=True):
        assert per_patient.setdefault(p, f) == f  # a patient's images share one fold
    assert set(fold_of) == set(range(5))  # every fold used; every image has exactly one
    for cls in set(labels):  # stratified: each fold's share of a class within one patient's images
        counts = Counter(f for f, y in zip(fold_of, labels, strict=True) if y == cls)
        largest_patient = max(Counter(p for p, y in zip(patients, labels, strict=True)
                                      if y == cls).values())  # fmt: skip
        assert max(counts.values()) - min(counts.values()) <= largest_patient
    assert patient_folds(labels, patients, folds=5, seed=3) == fold_of
    assert patient_folds(labels, patients, folds=5, seed=4) != fold_of


def test_k_fold_through_the_datamodule_keeps_test_images_out(tiny_root: Path, tmp_path: Path):
    from pneumonia.data import ChestXRayDataModule
    from pneumonia.errors import InputValueError

    def module(fold: int) -> ChestXRayDataModule:
        dm = ChestXRayDataModule(tiny_root, cache_dir=tmp_path / "cache", folds=3, fold=fold,
                                 resize_size=40, crop_size=32, num_workers=0)  # fmt: skip
        dm.setup()
        return dm

    modules = [module(k) for k in range(3)]
    vals = [set(dm.files("val")) for dm in modules]
    pool = set(modules[0].files("train")) | vals[0]
    assert set().union(*vals) == pool  # the folds cover the pool
    assert sum(len(v) for v in vals) == len(pool)  # each image in exactly one fold
    for dm, val in zip(modules, vals, strict=True):
        assert set(dm.files("train")) == pool - val
        assert not dm.patients("train") & dm.patients("val")
        assert not pool & set(dm.files("test"))  # test images never enter a fold
    with pytest.raises(InputValueError, match="fold from 0 to folds - 1"):
        ChestXRayDataModule(tiny_root, folds=3, fold=3)
