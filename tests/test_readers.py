"""Label files and the public collections as the table of images, and that table through
the DataModule: splits by patient, attributes carried, bad input refused with the way out."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pandas as pd
import pytest

from pneumonia.data import ChestXRayDataModule
from pneumonia.data.readers import evaluation_listing, read_table
from pneumonia.data.readers.common import LabelFileError
from tests.collection_copies import (
    CHEXPERT_ROWS,
    HOSPITAL_TABLE,
    NIH_ROWS,
    RSNA_IMAGES,
    chexpert_copy,
    hospital_copy,
    mimic_copy,
    nih_copy,
    rsna_copy,
)

SMALL = {"resize_size": 40, "crop_size": 32, "batch_size": 4, "num_workers": 0}


def datamodule(root: Path, table: dict, tmp_path: Path, **kwargs) -> ChestXRayDataModule:
    return ChestXRayDataModule(
        root, table=table, cache_dir=tmp_path / "cache", **{**SMALL, **kwargs}
    )


# ------------------------------------------------------------------------- manifest
def test_a_hospital_label_file_trains_with_patients_whole_and_attributes_kept(
    tmp_path: Path,
) -> None:
    root = hospital_copy(tmp_path / "hospital")
    dm = datamodule(root, HOSPITAL_TABLE, tmp_path, val_fraction=0.25)
    dm.setup("fit")
    labels = pd.read_csv(root / "labels.csv")
    train, val = dm.frame("train"), dm.frame("val")
    assert len(train) + len(val) == len(labels)  # every row, once
    assert not set(train["patient_id"]) & set(val["patient_id"])  # patients kept whole
    assert {"sex", "age", "site", "source"} <= set(train.columns)
    # each row's attributes stay with its own image through the split
    by_file = labels.assign(path=[str(root / f) for f in labels["file"]]).set_index("path")
    for frame in (train, val):
        for _, row in frame.iterrows():
            expected = by_file.loc[row["path"]]
            assert row["site"] == expected["site"]
            assert row["patient_id"] == expected["mrn"]
            assert row["label"] == {"no": "NORMAL", "yes": "PNEUMONIA"}[expected["finding"]]
    counts = labels["finding"].value_counts()
    assert dm.split_counts("train")[0] + dm.split_counts("val")[0] == counts["no"]
    assert dm.classes == ["NORMAL", "PNEUMONIA"]
    images, targets = next(iter(dm.train_dataloader()))  # DICOM and PNG decode alike
    assert images.shape[1:] == (3, 32, 32)


def test_a_parquet_label_file_reads_as_its_csv(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    root = hospital_copy(tmp_path / "hospital")
    pd.read_csv(root / "labels.csv").to_parquet(root / "labels.parquet")
    from_csv = read_table(root, HOSPITAL_TABLE)
    from_parquet = read_table(root, {**HOSPITAL_TABLE, "file": "labels.parquet"})
    pd.testing.assert_frame_equal(from_csv, from_parquet, check_dtype=False)


def test_dicom_headers_fill_what_the_label_file_does_not_give(tmp_path: Path) -> None:
    root = hospital_copy(tmp_path / "hospital")
    table = read_table(root, {**HOSPITAL_TABLE, "columns": {"path": "file", "label": "finding"}})
    dicom = table[table["path"].str.contains("IMG")]
    assert len(dicom) > 0
    # the header's PatientID is H<patient>, the folder's number
    for _, row in dicom.iterrows():
        assert row["patient_id"] == "H" + Path(row["path"]).parent.name
        assert row["study_id"]  # StudyInstanceUID
    assert table.loc[~table.index.isin(dicom.index), "patient_id"].isna().all()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"columns": {"path": "file", "label": "diagnosis"}}, r"no column 'diagnosis'.*'finding'"),
        ({"labels": {"NORMAL": ["no"], "PNEUMONIA": ["pos"]}}, r"'yes'.*data.table.labels"),
        ({"file": "missing.csv"}, r"missing.csv does not exist.*labels.csv"),
        ({"columns": {"path": "file", "label": "finding", "oops": "x"}}, r"unknown fields"),
    ],
)
def test_a_wrong_label_file_says_what_is_wrong(tmp_path: Path, change, message) -> None:
    root = hospital_copy(tmp_path / "hospital")
    with pytest.raises(LabelFileError, match=message):
        read_table(root, {**HOSPITAL_TABLE, **change})


def test_paths_that_do_not_exist_and_patients_on_both_sides_are_refused(tmp_path: Path):
    root = hospital_copy(tmp_path / "hospital")
    shutil.rmtree(root / "export" / "003")
    with pytest.raises(LabelFileError, match=r"2 of the 24 images .* do not exist.*export/003"):
        read_table(root, HOSPITAL_TABLE)
    root = hospital_copy(tmp_path / "again")
    labels = pd.read_csv(root / "labels.csv")
    labels["split"] = ["train", "test"] * (len(labels) // 2)  # each patient on both sides
    labels.to_csv(root / "labels.csv", index=False)
    columns = {**HOSPITAL_TABLE["columns"], "split": "split"}
    with pytest.raises(LabelFileError, match=r"12 patient\(s\) are on two sides"):
        read_table(root, {**HOSPITAL_TABLE, "columns": columns})


def test_a_split_column_gives_the_splits_and_evaluation_takes_its_test_rows(tmp_path: Path):
    root = hospital_copy(tmp_path / "hospital")
    labels = pd.read_csv(root / "labels.csv")
    labels["split"] = ["test" if int(m[1:]) >= 8 else "train" for m in labels["mrn"]]
    labels.to_csv(root / "labels.csv", index=False)
    table = {**HOSPITAL_TABLE, "columns": {**HOSPITAL_TABLE["columns"], "split": "split"}}
    dm = datamodule(root, table, tmp_path)
    dm.setup()
    assert len(dm.files("test")) == (labels["split"] == "test").sum()
    assert set(dm.frame("test")["patient_id"]) == {"H008", "H009", "H010", "H011"}
    listing = evaluation_listing(root, table, ["NORMAL", "PNEUMONIA"])
    assert sorted(listing.files) == sorted(dm.files("test"))
    # class names map onto a checkpoint's, case aside
    lower = evaluation_listing(root, table, ["normal", "pneumonia"])
    assert lower.labels == listing.labels


# ----------------------------------------------------------------- public collections
def test_rsna_an_image_is_pneumonia_when_any_box_is(tmp_path: Path, caplog) -> None:
    root = rsna_copy(tmp_path / "rsna")
    with caplog.at_level(logging.INFO):
        table = read_table(root, {"reader": "rsna"})
    frontal = {pid: v for pid, v in RSNA_IMAGES.items() if v[2] != "LL"}
    assert sorted(table["image_id"]) == sorted(frontal)
    for _, row in table.iterrows():
        assert row["label"] == ("PNEUMONIA" if max(frontal[row["image_id"]][0]) else "NORMAL")
        assert row["patient_id"] == row["image_id"]  # from the header
        assert row["view"] == frontal[row["image_id"]][2]
        assert 40 <= row["age"] < 47  # "040": RSNA's ages have no unit; years
    assert "1 of 7 images left out (view not in" in caplog.text
    normal_only = read_table(root, {"reader": "rsna", "negatives": "normal", "views": None})
    assert len(normal_only) == len(RSNA_IMAGES) - 1  # "No Lung Opacity / Not Normal" out


@pytest.mark.parametrize("version", ["2020", "2017"])
def test_nih_findings_split_and_nested_image_folders(tmp_path: Path, version: str) -> None:
    root = nih_copy(tmp_path / "nih", version=version)
    table = read_table(root, {"reader": "nih"})
    usable = ("No Finding", "Pneumonia", "Pneumonia|Infiltration")
    expected = {r[0]: r for r in NIH_ROWS if r[6] != "LL" and r[1] in usable}
    assert sorted(Path(p).name for p in table["path"]) == sorted(expected)
    for _, row in table.iterrows():
        name, findings, _, patient, age, sex, view, split = expected[Path(row["path"]).name]
        assert row["label"] == ("PNEUMONIA" if "Pneumonia" in findings else "NORMAL")
        assert (row["patient_id"], row["age"], row["sex"], row["view"], row["split"]) == (
            str(patient),
            age,
            sex,
            view,
            split,
        )
        assert Path(row["path"]).is_file()
    negative = read_table(root, {"reader": "nih", "other_findings": "negative", "views": None})
    assert len(negative) == len(NIH_ROWS)
    effusion = negative[negative["path"].str.endswith("00000005_001.png")]
    assert effusion["label"].tolist() == ["NORMAL"]


@pytest.mark.parametrize(
    ("uncertain", "blank", "kept"),
    [
        ("drop", "drop", 5),
        ("positive", "drop", 6),
        ("negative", "drop", 6),
        ("drop", "negative", 6),
    ],
)
def test_chexpert_uncertain_and_blank_labels_follow_the_stated_policies(
    tmp_path: Path, uncertain: str, blank: str, kept: int
) -> None:
    root = chexpert_copy(tmp_path)
    table = read_table(root, {"reader": "chexpert", "uncertain": uncertain, "blank": blank})
    assert len(table) == kept  # the lateral is never there
    assert "LATERAL" not in set(table["view"])
    rows = {f"patient{r[1]:05d}/study{r[2]}/{r[3]}": r for r in CHEXPERT_ROWS}
    policy = {"positive": "PNEUMONIA", "negative": "NORMAL"}
    for _, row in table.iterrows():
        key = "/".join(Path(row["path"]).with_suffix("").parts[-3:])
        split, patient, study, _, sex, age, _, view, clear, pneumonia = rows[key]
        assert Path(row["path"]).is_file()
        assert row["patient_id"] == f"patient{patient:05d}"
        assert row["split"] == ("val" if split == "valid" else "train")
        if pneumonia in ("1.0", "0.0") or clear == "1.0":
            assert row["label"] == ("PNEUMONIA" if pneumonia == "1.0" else "NORMAL")
        elif pneumonia == "-1.0":
            assert row["label"] == policy[uncertain]
        else:  # not mentioned, and other findings: never PNEUMONIA
            assert row["label"] == policy[blank] == "NORMAL"


def test_mimic_joins_study_labels_to_images_and_the_official_split(tmp_path: Path) -> None:
    root = mimic_copy(tmp_path / "mimic")
    table = read_table(root, {"reader": "mimic"})
    assert sorted(table["split"]) == ["test", "train", "train", "val"]  # -1 and lateral out
    assert set(table["view"]) <= {"PA", "AP"}
    for _, row in table.iterrows():
        assert Path(row["path"]).is_file()
        assert f"p{row['patient_id']}/s{row['study_id']}/" in row["path"]
    assert table.set_index("study_id").loc["53189527", "label"] == "PNEUMONIA"
    assert table.set_index("study_id").loc["50414267", "label"] == "NORMAL"  # No Finding


def test_an_unknown_reader_or_option_names_the_valid_ones(tmp_path: Path) -> None:
    from pneumonia.errors import InputValueError

    root = nih_copy(tmp_path / "nih")
    with pytest.raises(InputValueError, match="manifest, rsna, nih, chexpert, mimic"):
        read_table(root, {"reader": "padchest"})
    with pytest.raises(InputValueError, match="other_findings='maybe'; valid: drop, negative"):
        read_table(root, {"reader": "nih", "other_findings": "maybe"})
    with pytest.raises(InputValueError, match="unexpected keyword"):
        read_table(root, {"reader": "nih", "uncertain": "drop"})


def test_a_label_file_with_three_classes_trains_on_the_two_chosen(tmp_path: Path, caplog):
    from pneumonia.errors import InputValueError

    root = hospital_copy(tmp_path / "hospital")
    labels = pd.read_csv(root / "labels.csv")
    labels.loc[labels["mrn"].isin(["H000", "H003"]), "finding"] = "covid"
    labels.to_csv(root / "labels.csv", index=False)
    three = {**HOSPITAL_TABLE, "labels": {"NORMAL": ["no"], "PNEUMONIA": ["yes"],
                                          "COVID": ["covid"]}}  # fmt: skip
    with pytest.raises(InputValueError, match=r"binary: choose two with data.classes"):
        datamodule(root, three, tmp_path).setup("fit")
    dm = datamodule(root, three, tmp_path, classes=["PNEUMONIA", "NORMAL"])
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    assert "Leaving out 4 rows of the classes ['COVID']" in caplog.text
    assert dm.classes == ["NORMAL", "PNEUMONIA"]
    kept = set(dm.frame("train")["patient_id"]) | set(dm.frame("val")["patient_id"])
    assert kept == set(labels["mrn"]) - {"H000", "H003"}


def test_blank_split_cells_join_training_and_ids_keep_their_zeros(tmp_path: Path) -> None:
    root = hospital_copy(tmp_path / "hospital")
    labels = pd.read_csv(root / "labels.csv", dtype=str)
    labels["mrn"] = ["007" if m == "H007" else "7" if m == "H008" else m for m in labels["mrn"]]
    labels["split"] = ["test" if m == "H011" else "" for m in labels["mrn"]]
    labels.to_csv(root / "labels.csv", index=False)
    table = {**HOSPITAL_TABLE, "columns": {**HOSPITAL_TABLE["columns"], "split": "split"}}
    dm = datamodule(root, table, tmp_path)
    dm.setup()
    assert set(dm.frame("test")["patient_id"]) == {"H011"}
    pool = pd.concat([dm.frame("train"), dm.frame("val")])
    assert len(pool) == len(labels) - 2  # the blank cells: the training pool
    assert {"007", "7"} <= set(pool["patient_id"])  # two patients, not one


def test_rows_without_a_patient_id_are_each_their_own_patient(tmp_path: Path) -> None:
    from tests.collection_copies import picture

    root = tmp_path / "export"
    rows = ["file,finding"]
    for k in range(12):  # every file is called image.png, as exports often are
        picture(root / f"study{k:02d}" / "image.png", k)
        rows.append(f"study{k:02d}/image.png,{'yes' if k % 2 else 'no'}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    table = {**HOSPITAL_TABLE, "columns": {"path": "file", "label": "finding"}}
    dm = datamodule(root, table, tmp_path, val_fraction=0.25)
    dm.setup("fit")
    # round(0.25 * 6) = 2 of each class in val; not all 12 files on one side as "one patient"
    assert (len(dm.frame("train")), len(dm.frame("val"))) == (8, 4)
    assert len(dm.patients("train")) == 8


def test_an_image_without_a_view_is_kept_and_counted(tmp_path: Path, caplog) -> None:
    from tests.collection_copies import dicom_picture

    root = rsna_copy(tmp_path / "rsna")
    pid = next(iter(RSNA_IMAGES))
    dicom_picture(root / "stage_2_train_images" / f"{pid}.dcm", 0, patient_id=pid)  # no view
    with caplog.at_level(logging.WARNING):
        table = read_table(root, {"reader": "rsna"})
    assert pid in set(table["image_id"])
    assert "1 images have no view position; kept" in caplog.text


def test_one_view_given_as_a_word_is_that_view_not_its_letters(tmp_path: Path) -> None:
    """data.table.views=PA (a string on the command line) kept the views 'P' and 'A': none."""
    from pneumonia.data.readers.common import frontal_only

    table = pd.DataFrame({"path": ["a", "b", "c"], "view": ["PA", "AP", "LL"]})
    assert frontal_only(table, "PA", tmp_path)["path"].tolist() == ["a"]
    assert frontal_only(table, ["PA", "AP"], tmp_path)["path"].tolist() == ["a", "b"]
