"""Few-image copies of the public collections, with their real label-file formats: column
names and order, multi-label strings, uncertain labels, nested image folders. Images are small
random gray pictures (or DICOM files), large enough for the tests' 32 px crop."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
from PIL import Image

from tests.dicom_files import write_dicom


def picture(path: Path, seed: int) -> Path:
    """A 48 x 56 gray image at ``path`` (format from the suffix)."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (56, 48), dtype=np.uint8)).save(path)
    return path


def dicom_picture(path: Path, seed: int, **header) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_dicom(path, rng.integers(0, 4096, (56, 48)), **header)


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wt", newline="") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


# ----------------------------------------------------------------------------- RSNA
RSNA_IMAGES = {  # patientId: (Target rows, detailed class, view)
    "0004cfab-14fd-4e49-80ba-63a80b6bddd6": ([0], "No Lung Opacity / Not Normal", "PA"),
    "00313ee0-9eaa-42f4-b0ab-c148ed3241cd": ([0], "Normal", "PA"),
    "00322d4d-1c29-4943-afc9-b6754be640eb": ([0], "Normal", "AP"),
    "00436515-870c-4b36-a041-de91049b9ab4": ([1, 1], "Lung Opacity", "AP"),
    "00569f44-917d-4c86-a842-81832af98c30": ([0], "Normal", "AP"),
    "006cec2e-6ce2-4549-bffa-eadfcd1e9970": ([1], "Lung Opacity", "PA"),
    "00704310-78a8-4b38-8475-49f4573b2dbb": ([1, 1], "Lung Opacity", "LL"),  # a lateral
}


def rsna_copy(root: Path) -> Path:
    boxes = ["patientId,x,y,width,height,Target"]
    detail = ["patientId,class"]
    for i, (pid, (targets, kind, view)) in enumerate(RSNA_IMAGES.items()):
        for t in targets:
            boxes.append(f"{pid},264.0,152.0,213.0,379.0,1" if t else f"{pid},,,,,0")
            detail.append(f"{pid},{kind}")
        dicom_picture(
            root / "stage_2_train_images" / f"{pid}.dcm",
            i,
            patient_id=pid,
            view=view,
            sex="MF"[i % 2],
            age=f"0{40 + i}",
        )
    write_text(root / "stage_2_train_labels.csv", "\n".join(boxes) + "\n")
    write_text(root / "stage_2_detailed_class_info.csv", "\n".join(detail) + "\n")
    return root


# ------------------------------------------------------------------------------ NIH
NIH_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
    "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
NIH_ROWS = [  # image, findings, follow-up, patient, age, sex, view, split
    ("00000001_000.png", "Cardiomegaly|Emphysema", 0, 1, 57, "M", "PA", "train"),
    ("00000001_001.png", "No Finding", 1, 1, 58, "M", "PA", "train"),
    ("00000002_000.png", "Pneumonia|Infiltration", 0, 2, 81, "M", "AP", "train"),
    ("00000003_000.png", "No Finding", 0, 3, 74, "F", "PA", "train"),
    ("00000004_000.png", "Pneumonia", 0, 4, 82, "M", "AP", "test"),
    ("00000005_000.png", "No Finding", 0, 5, 69, "F", "PA", "test"),
    ("00000005_001.png", "Effusion", 1, 5, 69, "F", "PA", "test"),
    ("00000006_000.png", "Pneumonia", 0, 6, 22, "M", "LL", "train"),  # not frontal
    ("00000007_000.png", "No Finding", 0, 7, 33, "F", "AP", "train"),
]


def nih_copy(root: Path, *, version: str = "2020") -> Path:
    lines = [NIH_HEADER + ("," if version == "2017" else "")]
    for k, (name, findings, follow, patient, age, sex, view, _) in enumerate(NIH_ROWS):
        cells = [name, findings, str(follow), str(patient), str(age), sex, view,
                 "2682", "2749", "0.143", "0.143"]  # fmt: skip
        lines.append(",".join(cells) + ("," if version == "2017" else ""))
        folder = "images_001" if k < 5 else "images_002"
        picture(root / folder / "images" / name, k)
    name = "Data_Entry_2017_v2020.csv" if version == "2020" else "Data_Entry_2017.csv"
    write_text(root / name, "\n".join(lines) + "\n")
    for split, listed in (("train", "train_val_list.txt"), ("test", "test_list.txt")):
        names = [r[0] for r in NIH_ROWS if r[7] == split]
        write_text(root / listed, "\n".join(names) + "\n")
    return root


# ------------------------------------------------------------------------- CheXpert
CHEXPERT_FINDINGS = [
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
    "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
    "Pleural Other", "Fracture", "Support Devices",
]  # fmt: skip
# split, patient, study, view file, sex, age, frontal/lateral, AP/PA, no finding, pneumonia
CHEXPERT_ROWS = [
    ("train", 1, 1, "view1_frontal", "Female", 68, "Frontal", "AP", "1.0", ""),  # NORMAL
    ("train", 2, 1, "view1_frontal", "Male", 87, "Frontal", "PA", "", "1.0"),  # PNEUMONIA
    ("train", 2, 1, "view2_lateral", "Male", 87, "Lateral", "", "", "1.0"),  # lateral
    ("train", 3, 1, "view1_frontal", "Female", 41, "Frontal", "AP", "", "-1.0"),  # uncertain
    ("train", 4, 1, "view1_frontal", "Male", 55, "Frontal", "AP", "", ""),  # blank, findings
    ("train", 4, 2, "view1_frontal", "Male", 55, "Frontal", "PA", "", "0.0"),  # NORMAL
    ("valid", 64541, 1, "view1_frontal", "Male", 73, "Frontal", "AP", "", "1.0"),
    ("valid", 64542, 1, "view1_frontal", "Female", 70, "Frontal", "PA", "1.0", "0.0"),
]


def chexpert_copy(parent: Path) -> Path:
    """``parent/CheXpert-v1.0-small/{train.csv, valid.csv, train/, valid/}``; returns that
    folder (what ``data.root`` points at)."""
    root = parent / "CheXpert-v1.0-small"
    header = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_FINDINGS]
    files: dict[str, list[str]] = {"train": [",".join(header)], "valid": [",".join(header)]}
    for k, (split, patient, study, view, sex, age, fl, appa, clear, pneu) in enumerate(
        CHEXPERT_ROWS
    ):
        rel = f"{root.name}/{split}/patient{patient:05d}/study{study}/{view}.jpg"
        findings = {name: "" for name in CHEXPERT_FINDINGS}
        findings |= {"No Finding": clear, "Pneumonia": pneu, "Support Devices": "1.0"}
        if not clear and not pneu:
            findings["Pleural Effusion"] = "1.0"
        files[split].append(",".join([rel, sex, str(age), fl, appa, *findings.values()]))
        picture(parent / rel, k)
    for split, lines in files.items():
        write_text(root / f"{split}.csv", "\n".join(lines) + "\n")
    return root


# ---------------------------------------------------------------------------- MIMIC
MIMIC_STUDIES = [  # subject, study, split, pneumonia, no finding, images (dicom id, view)
    (
        "10000032",
        "50414267",
        "train",
        "",
        "1.0",
        [
            ("02aa804e-bde0afdd-112c0b34-7bc16630-4e384014", "PA"),
            ("174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962", "LATERAL"),
        ],
    ),  # noqa: E501
    (
        "10000032",
        "53189527",
        "train",
        "1.0",
        "",
        [("2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab", "AP")],
    ),  # noqa: E501
    (
        "10000764",
        "57375967",
        "train",
        "-1.0",
        "",
        [("096052b7-d256dc40-453a102b-fa7d01c6-1b22c6b4", "AP")],
    ),  # noqa: E501
    (
        "10000898",
        "50771383",
        "validate",
        "0.0",
        "",
        [("b75df7f4-2c4e2bd7-8ea5d13c-a1b9fcf2-f85a6d8d", "PA")],
    ),  # noqa: E501
    (
        "10001038",
        "58224503",
        "test",
        "1.0",
        "",
        [("ab52a4a1-f7b0cd86-8a4df8bb-ddb8e2c3-4e1de5ab", "AP")],
    ),  # noqa: E501
]


def mimic_copy(root: Path) -> Path:
    labels = ["subject_id,study_id,Atelectasis,Cardiomegaly,Consolidation,Edema,"
              "Enlarged Cardiomediastinum,Fracture,Lung Lesion,Lung Opacity,No Finding,"
              "Pleural Effusion,Pleural Other,Pneumonia,Pneumothorax,Support Devices"]  # fmt: skip
    meta = ["dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,"
            "Columns,StudyDate,StudyTime,ProcedureCodeSequence_CodeMeaning,"
            "ViewCodeSequence_CodeMeaning,PatientOrientationCodeSequence_CodeMeaning"]  # fmt: skip
    split = ["dicom_id,study_id,subject_id,split"]
    k = 0
    for subject, study, side, pneumonia, clear, images in MIMIC_STUDIES:
        labels.append(f"{subject},{study},,,,,,,,,{clear},,,{pneumonia},,")
        for dicom_id, view in images:
            meta.append(
                f"{dicom_id},{subject},{study},CHEST (PA AND LAT),{view},3056,2544,21800506,"
                "213014.531,CHEST (PA AND LAT),postero-anterior,Erect"
            )
            split.append(f"{dicom_id},{study},{subject},{side}")
            picture(root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" /
                    f"{dicom_id}.jpg", k)  # fmt: skip
            k += 1
    write_text(root / "mimic-cxr-2.0.0-chexpert.csv.gz", "\n".join(labels) + "\n")
    write_text(root / "mimic-cxr-2.0.0-metadata.csv.gz", "\n".join(meta) + "\n")
    write_text(root / "mimic-cxr-2.0.0-split.csv.gz", "\n".join(split) + "\n")
    return root


# ------------------------------------------------------------------ a hospital's export
def hospital_copy(root: Path, n_patients: int = 12) -> Path:
    """A hospital export: DICOM and PNG files, two images per patient, a label spreadsheet
    with its own column names (``file``, ``finding``, ``mrn``, ``site``, ``sex``, ``age``)."""
    lines = ["file,finding,mrn,site,sex,age"]
    for p in range(n_patients):
        finding = "yes" if p % 3 else "no"
        site = "north" if p % 2 else "south"
        for k in range(2):
            i = 2 * p + k
            if i % 4 == 0:
                rel = f"export/{p:03d}/IMG{k}"  # a DICOM without an extension
                dicom_picture(root / rel, i, patient_id=f"H{p:03d}")
            else:
                rel = f"export/{p:03d}/img{k}.png"
                picture(root / rel, i)
            lines.append(f"{rel},{finding},H{p:03d},{site},{'MF'[p % 2]},{30 + p}")
    write_text(root / "labels.csv", "\n".join(lines) + "\n")
    return root


HOSPITAL_TABLE = {
    "reader": "manifest",
    "file": "labels.csv",
    "columns": {"path": "file", "label": "finding", "patient_id": "mrn"},
    "labels": {"NORMAL": ["no"], "PNEUMONIA": ["yes"]},
}
