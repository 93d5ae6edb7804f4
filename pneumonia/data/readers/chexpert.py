"""CheXpert and MIMIC-CXR-JPG, read from their own published files (nothing is downloaded):
both label with CheXpert's labeller (``Pneumonia``: 1, 0, -1 uncertain, blank not mentioned).

- **CheXpert** (``data=chexpert``): ``train.csv`` / ``valid.csv``, JPEG.
- **MIMIC-CXR-JPG** (``data=mimic``): the chexpert label file, the metadata and the split file.

Rows a label policy or the view filter leaves out are counted in the log.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from pneumonia.data.readers.common import (
    FRONTAL,
    finish,
    frontal_only,
    left_out,
    read_label_file,
    require_columns,
)
from pneumonia.data.readers.rows import RowCheck, RowRules, check_policy, from_file
from pneumonia.data.table import split_name
from pneumonia.errors import InputValueError

UNCERTAIN_POLICIES = ("drop", "positive", "negative")
BLANK_POLICIES = ("drop", "negative")
LABEL_FIX = "CheXpert's labels are 1, 0, -1 (uncertain) or blank: correct or remove those rows."


def _chexpert_label(value: object, no_finding: object, uncertain: str, blank: str) -> str | None:
    """CheXpert's ``Pneumonia`` cell: 1 PNEUMONIA, 0 NORMAL, -1 (uncertain) as ``uncertain``
    says; a blank (not mentioned) is NORMAL where "No Finding" is 1, else as ``blank`` says."""
    text = "" if pd.isna(value) else str(value).strip()
    number = float(text) if text else None
    if number == 1.0:
        return "PNEUMONIA"
    if number == 0.0:
        return "NORMAL"
    if number is None and not pd.isna(no_finding) and str(no_finding).strip() in ("1", "1.0"):
        return "NORMAL"
    policy = uncertain if number == -1.0 else blank
    return {"drop": None, "positive": "PNEUMONIA", "negative": "NORMAL"}[policy]


def _with_labels(
    table: pd.DataFrame, uncertain: str, blank: str, where: Path, check: RowCheck
) -> pd.DataFrame:
    """The rows labelled by the policies; a ``Pneumonia`` value outside CheXpert's is recorded
    in ``check``, those under a ``drop`` policy are counted in the log."""
    check_policy("uncertain", uncertain, UNCERTAIN_POLICIES)
    check_policy("blank", blank, BLANK_POLICIES)
    table = table[check.cells(table, "Pneumonia", known=("1", "0", "-1"), required=False,
                              fix=LABEL_FIX)]  # fmt: skip
    no_finding = table["No Finding"] if "No Finding" in table else [None] * len(table)
    labels = [
        _chexpert_label(v, n, uncertain, blank)
        for v, n in zip(table["Pneumonia"], no_finding, strict=True)
    ]
    table = table.assign(label=labels)
    why = f"Pneumonia uncertain (uncertain={uncertain}) or blank (blank={blank})"
    return left_out(table, table["label"].notna(), why, where)


def read_chexpert(
    root: Path,
    *,
    files: Sequence[str] = ("train.csv", "valid.csv"),
    uncertain: str = "drop",
    blank: str = "drop",
    views: Sequence[str] | None = FRONTAL,
    rules: RowRules | None = None,
) -> pd.DataFrame:
    """CheXpert (``CheXpert-v1.0`` or ``-small``): ``train.csv`` is the training pool,
    ``valid.csv`` the validation split (a ``test*.csv`` the test split); patient and study
    from the path."""
    check = RowCheck(root)  # each row's place names its file: train.csv line 7
    parts = []
    for name in files:
        where = root / name
        split = split_name(Path(name).name.split(".")[0].split("_")[0])
        if split not in ("train", "val", "test"):
            raise InputValueError(
                f"data.table.files: cannot tell the split of {name} (train*, valid*, test*)"
            )
        raw = read_label_file(where, "CheXpert label file", rules)
        require_columns(raw, ("Path", "Pneumonia"), where, "Is this CheXpert's train.csv?")
        raw = from_file(raw, name)
        part = _with_labels(raw[check.cells(raw, "Path")], uncertain, blank, where, check)
        part["split"] = split
        parts.append(part)
    table = pd.concat(parts)
    lines, table = table.index, table.reset_index(drop=True)
    ids = table["Path"].str.extract(r"(patient\d+)/(study\d+)")
    lateral = table.get("Frontal/Lateral", pd.Series([""] * len(table))).eq("Lateral")
    view = table["AP/PA"] if "AP/PA" in table else pd.Series([None] * len(table))
    out = pd.DataFrame(
        {
            "path": [str(_chexpert_path(root, p)) for p in table["Path"]],
            "label": table["label"],
            "patient_id": ids[0],
            "study_id": ids[0] + "/" + ids[1],
            "split": table["split"],
            "sex": table.get("Sex"),
            "age": pd.to_numeric(table.get("Age"), errors="coerce"),
            "view": view.where(~lateral, "LATERAL"),
        }
    ).set_axis(lines)
    where = root / files[0]
    fix = f"Point data.root at the folder holding {files[0]} and the image folders."
    out = frontal_only(out, views, where)
    return finish(out, where, source="chexpert", header=False, fix=fix, check=check, rules=rules)


def _chexpert_path(root: Path, listed: str) -> Path:
    """``CheXpert-v1.0-small/train/...`` names the collection's folder: resolve it in or
    beside ``root``."""
    path = Path(listed)
    if path.parts and path.parts[0] == root.name:
        return root.parent / path
    if (root / path).exists() or len(path.parts) < 2:
        return root / path
    return root / Path(*path.parts[1:])


MIMIC_FILES = {
    "labels": "mimic-cxr-2.0.0-chexpert.csv.gz",
    "metadata": "mimic-cxr-2.0.0-metadata.csv.gz",
    "split": "mimic-cxr-2.0.0-split.csv.gz",
}


def _mimic_file(root: Path, name: str) -> Path:
    path = root / name
    return (
        path
        if path.is_file() or not (root / name.removesuffix(".gz")).is_file()
        else (root / name.removesuffix(".gz"))
    )


def read_mimic(
    root: Path,
    *,
    uncertain: str = "drop",
    blank: str = "drop",
    views: Sequence[str] | None = FRONTAL,
    rules: RowRules | None = None,
) -> pd.DataFrame:
    """MIMIC-CXR-JPG: study labels (chexpert file) joined to each image's metadata
    (``ViewPosition``) and the official split (train / validate / test); images at
    ``files/pNN/p<subject>/s<study>/<dicom_id>.jpg``. An image the split file leaves out is
    left out and named in the log (``data.table.no_split``): it may be a test image."""
    rules = rules or RowRules()
    paths = {k: _mimic_file(root, v) for k, v in MIMIC_FILES.items()}
    check = RowCheck(root)  # each row's place names its file
    study = ["subject_id", "study_id"]
    labels = _mimic_read(paths["labels"], "chexpert label file", [*study, "Pneumonia"], rules,
                         check)  # fmt: skip
    meta = _mimic_read(paths["metadata"], "metadata file", ["dicom_id", *study, "ViewPosition"],
                       rules, check, required=["dicom_id", *study])  # fmt: skip
    split = _mimic_read(paths["split"], "split file", ["dicom_id", "split"], rules, check,
                        required=["dicom_id"])  # fmt: skip
    labels = _with_labels(labels, uncertain, blank, paths["labels"], check)
    labels = labels[check.agree(labels, study, "label", "study(ies) listed with two labels",
                                "A study has one label: remove the wrong rows.")]  # fmt: skip
    labels = labels[check.once(labels, study, rules.duplicates, "study and label")]
    split = split[check.agree(split, ["dicom_id"], "split", "image(s) listed in two splits",
                              "An image has one split: remove the wrong rows.")]  # fmt: skip
    split = split[check.once(split, ["dicom_id"], rules.duplicates, "dicom_id and split")]
    images = meta.assign(_line=meta.index).merge(
        labels[["subject_id", "study_id", "label"]], on=["subject_id", "study_id"], how="inner"
    )
    images = images.merge(split[["dicom_id", "split"]], on="dicom_id", how="left")
    table = pd.DataFrame(
        {
            "path": [
                str(root / "files" / f"p{s[:2]}" / f"p{s}" / f"s{t}" / f"{d}.jpg")
                for s, t, d in zip(
                    images["subject_id"], images["study_id"], images["dicom_id"], strict=True
                )
            ],
            "label": images["label"],
            "patient_id": images["subject_id"],
            "study_id": images["study_id"],
            "split": images["split"],
            "view": images["ViewPosition"],
            "image_id": images["dicom_id"],
        }
    ).set_axis(images["_line"])
    fix = f"The images belong under {root / 'files'}."
    table = frontal_only(table, views, paths["labels"])
    return finish(table, root, source="mimic", header=False, fix=fix, check=check, rules=rules,
                  no_split="drop")  # fmt: skip


def _mimic_read(path: Path, what: str, columns: list[str], rules: RowRules, check: RowCheck,
                required: Sequence[str] = ("subject_id", "study_id")) -> pd.DataFrame:  # fmt: skip
    """One of MIMIC's files, its ``columns`` there and ``required`` ones filled (the other
    rows recorded in ``check``), each row's place prefixed with the file's name."""
    table = read_label_file(path, f"MIMIC-CXR {what}", rules)
    require_columns(table, columns, path, "Is this MIMIC-CXR-JPG's own file?")
    table = from_file(table, path.name)
    keep = pd.Series(True, index=table.index)
    for column in required:
        keep &= check.cells(table, column)
    return table[keep]
