"""RSNA and NIH ChestX-ray14, read from their own published label files; nothing is
downloaded, the user points ``data.root`` at their copy.

- **RSNA Pneumonia Detection Challenge** (``data=rsna``): ``stage_2_train_labels.csv``, DICOM.
- **NIH ChestX-ray14** (``data=nih``): ``Data_Entry_2017_v2020.csv``, PNG under
  ``images*/images/``, the official ``train_val_list.txt`` / ``test_list.txt``.

CheXpert and MIMIC-CXR-JPG, which share CheXpert's labeller, are in ``chexpert.py``.

Each gives the table of :mod:`pneumonia.data.table` with NORMAL / PNEUMONIA labels. Rows a
label policy or the view filter leaves out are counted in the log, never dropped silently.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from pneumonia.data.dicom import age_years
from pneumonia.data.readers.common import (
    FRONTAL,
    finish,
    frontal_only,
    left_out,
    read_label_file,
    require_columns,
)
from pneumonia.data.readers.rows import RowCheck, RowRules, check_policy, normal_text

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------- RSNA
def read_rsna(
    root: Path,
    *,
    labels_file: str = "stage_2_train_labels.csv",
    image_dir: str = "stage_2_train_images",
    negatives: str = "all",
    views: Sequence[str] | None = FRONTAL,
    rules: RowRules | None = None,
) -> pd.DataFrame:
    """RSNA: one row per box (``patientId``, ``Target``); an image is PNEUMONIA if any of its
    rows is. ``negatives=normal`` keeps only the images ``stage_2_detailed_class_info.csv``
    calls "Normal" as NORMAL (leaving out "No Lung Opacity / Not Normal"); ``all`` (default)
    takes every image without opacity. Patient and view come from the DICOM header. A
    ``Target`` other than 0 or 1, or blank, and an image with rows of both, are refused."""
    check_policy("negatives", negatives, ("all", "normal"))
    where = root / labels_file
    boxes = read_label_file(where, "RSNA label file", rules)
    require_columns(boxes, ("patientId", "Target"), where, "Is this stage_2_train_labels.csv?")
    check = RowCheck(where)
    fix = "RSNA's Target is 1 (a box of lung opacity) or 0 (none): correct or remove those rows."
    boxes = boxes[
        check.cells(boxes, "patientId") & check.cells(boxes, "Target", known=("0", "1"), fix=fix)
    ]
    boxes = boxes.assign(Target=[normal_text(t) for t in boxes["Target"]])
    boxes = boxes[check.agree(boxes, ["patientId"], "Target", "image(s) with rows of Target 0 "
                              "and rows of Target 1", fix)]  # fmt: skip
    first = boxes.drop_duplicates("patientId")  # one row per image, at its first line
    table = pd.DataFrame(
        {
            "path": [str(root / image_dir / f"{pid}.dcm") for pid in first["patientId"]],
            "label": ["PNEUMONIA" if t == "1" else "NORMAL" for t in first["Target"]],
            "image_id": list(first["patientId"]),
        },
        index=first.index,
    )
    if negatives == "normal":
        detail_path = root / "stage_2_detailed_class_info.csv"
        detail = read_label_file(detail_path, "RSNA class file")
        require_columns(detail, ("patientId", "class"), detail_path, "")
        kind = detail.drop_duplicates("patientId").set_index("patientId")["class"]
        normal = table["image_id"].map(kind).eq("Normal")
        table = left_out(
            table,
            normal | table["label"].eq("PNEUMONIA"),
            "not 'Normal' (negatives=normal)",
            where,
        )
    fix = f"The images belong in {root / image_dir}."
    table = finish(table, where, source="rsna", fix=fix, check=check, rules=rules)
    return frontal_only(table, views, where).reset_index(drop=True)


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
NIH_FINDINGS = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema", "Fibrosis",
    "Hernia", "Infiltration", "Mass", "No Finding", "Nodule", "Pleural_Thickening", "Pneumonia",
    "Pneumothorax",
)  # fmt: skip


def _nih_images(root: Path) -> dict[str, Path]:
    """Image file name -> path, from ``images_001/images/`` ... (or ``images/``)."""
    found = {}
    for folder in sorted(root.glob("images*")):
        inner = folder / "images" if (folder / "images").is_dir() else folder
        if inner.is_dir():
            with os.scandir(inner) as entries:
                found.update({e.name: Path(e.path) for e in entries if e.is_file()})
    return found


def read_nih(
    root: Path,
    *,
    labels_file: str | None = None,
    other_findings: str = "drop",
    views: Sequence[str] | None = FRONTAL,
    rules: RowRules | None = None,
) -> pd.DataFrame:
    """NIH ChestX-ray14: PNEUMONIA when "Pneumonia" is among the ``Finding Labels``, NORMAL
    when they read "No Finding"; images with other findings only are left out
    (``other_findings=drop``, default) or NORMAL (``negative``). The official lists give the
    split (``train_val_list.txt``: the training pool, ``test_list.txt``: test); an image in
    neither is left out and named in the log (``data.table.no_split``). A blank or unknown
    finding is refused."""
    check_policy("other_findings", other_findings, ("drop", "negative"))
    names = [labels_file] if labels_file else [n for n in NIH_FILES if (root / n).is_file()]
    where = root / (names[0] if names else NIH_FILES[0])
    raw = read_label_file(where, "NIH label file", rules)
    require_columns(
        raw,
        ("Image Index", "Finding Labels", "Patient ID"),
        where,
        "Is this Data_Entry_2017_v2020.csv?",
    )
    check = RowCheck(where)
    raw = raw[check.cells(raw, "Image Index") & _known_findings(raw, check)]
    table = raw.rename(columns=NIH_COLUMNS)
    table = table[[c for c in dict.fromkeys(NIH_COLUMNS.values()) if c in table]]
    findings = table["findings"].fillna("").str.split("|")
    pneumonia = findings.apply(lambda f: "Pneumonia" in f)
    clear = findings.apply(lambda f: f == ["No Finding"])
    keep = pneumonia | clear | (other_findings == "negative")
    table = left_out(table, keep, "other findings only (other_findings=drop)", where)
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
        table["age"] = [age_years(a) for a in table["age"]]
    split = _nih_split(root, table["image_id"])
    if split is not None:
        table["split"] = split
    fix = f"The images belong in {root}/images_001/images/ ... (as the collection ships)."
    table = frontal_only(table, views, where)
    return finish(table, where, source="nih", header=False, fix=fix, check=check, rules=rules,
                  no_split="drop")  # fmt: skip


def _known_findings(raw: pd.DataFrame, check: RowCheck) -> pd.Series:
    """Rows whose ``Finding Labels`` are filled and each one of NIH's fifteen: a misspelt
    "pneumonia" would otherwise make its image NORMAL or leave it out without a word."""
    filled = check.cells(raw, "Finding Labels")
    odd = filled & raw["Finding Labels"].fillna("").map(
        lambda f: not set(f.split("|")) <= set(NIH_FINDINGS)
    )
    if odd.any():
        check.add(int(odd.sum()), f"row(s) with 'Finding Labels' outside NIH's {len(NIH_FINDINGS)}",
                  [f"{w}: {v!r}" for w, v in raw["Finding Labels"][odd].items()],
                  f"NIH's findings are {', '.join(NIH_FINDINGS)} (joined by |): correct or "
                  "remove those rows.")  # fmt: skip
    return filled & ~odd


def _nih_split(root: Path, names: pd.Series) -> list[str | None] | None:
    """Each image's side in the official lists (None where in neither); None without them."""
    lists = {"train": root / "train_val_list.txt", "test": root / "test_list.txt"}
    if not all(p.is_file() for p in lists.values()):
        log.info("No train_val_list.txt / test_list.txt in %s: no official split", root)
        return None
    side = {}
    for split, path in lists.items():
        side.update({line.strip(): split for line in path.read_text().splitlines() if line})
    return [side.get(n) for n in names]
