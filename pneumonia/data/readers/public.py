"""The public pneumonia collections, read from their own published label files; nothing is
downloaded, the user points ``data.root`` at their copy.

- **RSNA Pneumonia Detection Challenge** (``data=rsna``): ``stage_2_train_labels.csv``, DICOM.
- **NIH ChestX-ray14** (``data=nih``): ``Data_Entry_2017_v2020.csv``, PNG under
  ``images*/images/``, the official ``train_val_list.txt`` / ``test_list.txt``.
- **CheXpert** (``data=chexpert``): ``train.csv`` / ``valid.csv``, JPEG.
- **MIMIC-CXR-JPG** (``data=mimic``): the chexpert label file, the metadata and the split file.

Each gives the table of :mod:`pneumonia.data.table` with NORMAL / PNEUMONIA labels. Rows a
label policy or the view filter leaves out are counted in the log, never dropped silently.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from pneumonia.data.readers.common import (
    LabelFileError,
    finish,
    read_label_file,
    require_columns,
)
from pneumonia.data.table import split_name
from pneumonia.errors import InputValueError

log = logging.getLogger(__name__)

FRONTAL = ("PA", "AP")
UNCERTAIN_POLICIES = ("drop", "positive", "negative")
BLANK_POLICIES = ("drop", "negative")


def _policy(name: str, value: str, valid: Sequence[str]) -> None:
    if value not in valid:
        raise InputValueError(f"data.table.{name}={value!r}; valid: {', '.join(valid)}")


def _left_out(table: pd.DataFrame, keep: pd.Series, why: str, where: Path) -> pd.DataFrame:
    dropped = int((~keep).sum())
    if dropped:
        log.info("%s: %d of %d images left out (%s)", where, dropped, len(table), why)
    return table[keep].reset_index(drop=True)


def _views(table: pd.DataFrame, views: Sequence[str] | None, where: Path) -> pd.DataFrame:
    """Only the rows whose ``view`` is in ``views`` (None: every view)."""
    if views is None or "view" not in table:
        return table
    wanted = {v.upper() for v in views}
    known = table["view"].notna() & table["view"].astype(str).str.strip().ne("")
    unknown = int((~known).sum())
    if unknown:  # kept: an unreadable file is then reported as a bad image, not dropped here
        log.warning("%s: %d images have no view position; kept", where, unknown)
    keep = ~known | table["view"].astype(str).str.strip().str.upper().isin(wanted)
    return _left_out(table, keep, f"view not in data.table.views={list(views)}", where)


# ----------------------------------------------------------------------------------- RSNA
def read_rsna(
    root: Path,
    *,
    labels_file: str = "stage_2_train_labels.csv",
    image_dir: str = "stage_2_train_images",
    negatives: str = "all",
    views: Sequence[str] | None = FRONTAL,
) -> pd.DataFrame:
    """RSNA: one row per box (``patientId``, ``Target``); an image is PNEUMONIA if any of its
    rows is. ``negatives=normal`` keeps only the images ``stage_2_detailed_class_info.csv``
    calls "Normal" as NORMAL (leaving out "No Lung Opacity / Not Normal"); ``all`` (default)
    takes every image without opacity. Patient and view come from the DICOM header."""
    _policy("negatives", negatives, ("all", "normal"))
    where = root / labels_file
    boxes = read_label_file(where, "RSNA label file")
    require_columns(boxes, ("patientId", "Target"), where, "Is this stage_2_train_labels.csv?")
    target = boxes.groupby("patientId", sort=False)["Target"].apply(
        lambda t: int(pd.to_numeric(t).max())
    )
    table = pd.DataFrame(
        {
            "path": [str(root / image_dir / f"{pid}.dcm") for pid in target.index],
            "label": ["PNEUMONIA" if t == 1 else "NORMAL" for t in target],
            "image_id": list(target.index),
        }
    )
    if negatives == "normal":
        detail_path = root / "stage_2_detailed_class_info.csv"
        detail = read_label_file(detail_path, "RSNA class file")
        require_columns(detail, ("patientId", "class"), detail_path, "")
        kind = detail.drop_duplicates("patientId").set_index("patientId")["class"]
        normal = table["image_id"].map(kind).eq("Normal")
        table = _left_out(
            table,
            normal | table["label"].eq("PNEUMONIA"),
            "not 'Normal' (negatives=normal)",
            where,
        )
    table = finish(table, where, source="rsna", fix=f"The images belong in {root / image_dir}.")
    return _views(table, views, where)


# ------------------------------------------------------------------------------------ NIH
NIH_FILES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
NIH_COLUMNS = {
    "Image Index": "image_id",
    "Finding Labels": "findings",
    "Patient ID": "patient_id",
    "Patient Age": "age",
    "Patient Gender": "sex",
    "Patient Sex": "sex",
    "View Position": "view",
    "Follow-up #": "follow_up",
}


def _nih_images(root: Path) -> dict[str, Path]:
    """Image file name -> path, from ``images_001/images/`` ... (or ``images/``)."""
    found = {}
    for folder in sorted(root.glob("images*")):
        inner = folder / "images" if (folder / "images").is_dir() else folder
        if inner.is_dir():
            with os.scandir(inner) as entries:
                found.update({e.name: Path(e.path) for e in entries if e.is_file()})
    return found


def _age(value: object) -> float | None:
    text = str(value).strip().upper()
    m = re.fullmatch(r"(\d+)([YMWD]?)", text)
    if not m:
        return None
    per_year = {"": 1.0, "Y": 1.0, "M": 12.0, "W": 52.1775, "D": 365.25}[m.group(2)]
    return round(int(m.group(1)) / per_year, 2)


def read_nih(
    root: Path,
    *,
    labels_file: str | None = None,
    other_findings: str = "drop",
    views: Sequence[str] | None = FRONTAL,
) -> pd.DataFrame:
    """NIH ChestX-ray14: PNEUMONIA when "Pneumonia" is among the ``Finding Labels``, NORMAL
    when they read "No Finding"; images with other findings only are left out
    (``other_findings=drop``, default) or NORMAL (``negative``). The official lists give the
    split (``train_val_list.txt``: the training pool, ``test_list.txt``: test)."""
    _policy("other_findings", other_findings, ("drop", "negative"))
    names = [labels_file] if labels_file else [n for n in NIH_FILES if (root / n).is_file()]
    where = root / (names[0] if names else NIH_FILES[0])
    raw = read_label_file(where, "NIH label file")
    require_columns(
        raw,
        ("Image Index", "Finding Labels", "Patient ID"),
        where,
        "Is this Data_Entry_2017_v2020.csv?",
    )
    table = raw.rename(columns=NIH_COLUMNS)
    table = table[[c for c in dict.fromkeys(NIH_COLUMNS.values()) if c in table]]
    findings = table["findings"].fillna("").str.split("|")
    pneumonia = findings.apply(lambda f: "Pneumonia" in f)
    clear = findings.apply(lambda f: f == ["No Finding"])
    keep = pneumonia | clear | (other_findings == "negative")
    table = _left_out(table, keep, "other findings only (other_findings=drop)", where)
    table.insert(
        1,
        "label",
        [
            "PNEUMONIA" if "Pneumonia" in f.split("|") else "NORMAL"
            for f in table["findings"].fillna("")
        ],
    )
    images = _nih_images(root)
    table.insert(0, "path", [str(images.get(n, root / "images" / n)) for n in table["image_id"]])
    if "age" in table:
        table["age"] = [_age(a) for a in table["age"]]
    table["split"] = _nih_split(root, table["image_id"])
    fix = f"The images belong in {root}/images_001/images/ ... (as the collection ships)."
    return finish(_views(table, views, where), where, source="nih", header=False, fix=fix)


def _nih_split(root: Path, names: pd.Series) -> list[str | None]:
    lists = {"train": root / "train_val_list.txt", "test": root / "test_list.txt"}
    if not all(p.is_file() for p in lists.values()):
        log.info("No train_val_list.txt / test_list.txt in %s: no official split", root)
        return [None] * len(names)
    side = {}
    for split, path in lists.items():
        side.update({line.strip(): split for line in path.read_text().splitlines() if line})
    return [side.get(n) for n in names]


# ------------------------------------------------------------------------ CheXpert, MIMIC
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
    if number not in (None, -1.0):
        raise LabelFileError(f"a Pneumonia label of {text!r}: CheXpert's are 1, 0, -1 or blank")
    policy = uncertain if number == -1.0 else blank
    return {"drop": None, "positive": "PNEUMONIA", "negative": "NORMAL"}[policy]


def _with_labels(table: pd.DataFrame, uncertain: str, blank: str, where: Path) -> pd.DataFrame:
    _policy("uncertain", uncertain, UNCERTAIN_POLICIES)
    _policy("blank", blank, BLANK_POLICIES)
    no_finding = table["No Finding"] if "No Finding" in table else [None] * len(table)
    labels = [
        _chexpert_label(v, n, uncertain, blank)
        for v, n in zip(table["Pneumonia"], no_finding, strict=True)
    ]
    table = table.assign(label=labels)
    why = f"Pneumonia uncertain (uncertain={uncertain}) or blank (blank={blank})"
    return _left_out(table, table["label"].notna(), why, where)


def read_chexpert(
    root: Path,
    *,
    files: Sequence[str] = ("train.csv", "valid.csv"),
    uncertain: str = "drop",
    blank: str = "drop",
    views: Sequence[str] | None = FRONTAL,
) -> pd.DataFrame:
    """CheXpert (``CheXpert-v1.0`` or ``-small``): ``train.csv`` is the training pool,
    ``valid.csv`` the validation split (a ``test*.csv`` the test split); patient and study
    from the path."""
    parts = []
    for name in files:
        where = root / name
        split = split_name(Path(name).name.split(".")[0].split("_")[0])
        if split not in ("train", "val", "test"):
            raise InputValueError(
                f"data.table.files: cannot tell the split of {name} (train*, valid*, test*)"
            )
        raw = read_label_file(where, "CheXpert label file")
        require_columns(raw, ("Path", "Pneumonia"), where, "Is this CheXpert's train.csv?")
        part = _with_labels(raw, uncertain, blank, where)
        part["split"] = split
        parts.append(part)
    table = pd.concat(parts, ignore_index=True)
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
    )
    where = root / files[0]
    fix = f"Point data.root at the folder holding {files[0]} and the image folders."
    return finish(_views(out, views, where), where, source="chexpert", header=False, fix=fix)


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
) -> pd.DataFrame:
    """MIMIC-CXR-JPG: study labels (chexpert file) joined to each image's metadata
    (``ViewPosition``) and the official split (train / validate / test); images at
    ``files/pNN/p<subject>/s<study>/<dicom_id>.jpg``."""
    paths = {k: _mimic_file(root, v) for k, v in MIMIC_FILES.items()}
    labels = read_label_file(paths["labels"], "MIMIC-CXR chexpert label file")
    require_columns(labels, ("subject_id", "study_id", "Pneumonia"), paths["labels"], "")
    meta = read_label_file(paths["metadata"], "MIMIC-CXR metadata file")
    require_columns(
        meta, ("dicom_id", "subject_id", "study_id", "ViewPosition"), paths["metadata"], ""
    )
    split = read_label_file(paths["split"], "MIMIC-CXR split file")
    require_columns(split, ("dicom_id", "split"), paths["split"], "")
    labels = _with_labels(labels, uncertain, blank, paths["labels"])
    images = meta.merge(
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
    )
    fix = f"The images belong under {root / 'files'}."
    table = _views(table, views, paths["labels"])
    return finish(table, paths["labels"], source="mimic", header=False, fix=fix)
