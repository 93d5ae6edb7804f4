"""Every label row checked before any work (pneumonia/data/readers/rows.py): each problem of a
file counted and named, with its lines, in one message; conflicts refused; repeats dropped
or refused; encodings and separators read or named; rows without a split counted."""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import pandas as pd
import pytest

from pneumonia.data.readers import evaluation_listing, read_table
from pneumonia.data.readers.rows import LabelFileError
from pneumonia.errors import InputValueError
from tests.collection_copies import (
    HOSPITAL_TABLE,
    chexpert_copy,
    hospital_copy,
    mimic_copy,
    nih_copy,
    rsna_copy,
)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def _write(path: Path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n")


def _flip(line: str) -> str:
    return line.replace(",no,", ",YES,").replace(",yes,", ",no,").replace(",YES,", ",yes,")


def test_every_problem_of_a_label_file_is_named_with_its_line_in_one_message(tmp_path: Path):
    root = hospital_copy(tmp_path / "hospital")
    lines = _lines(root / "labels.csv")  # line 2 is lines[1]
    lines += [
        _flip(lines[5]),  # line 26: line 6's image with the other label
        ",yes,H099,north,M,40",  # line 27: no path (a raw TypeError before)
        "export/000/x.png,maybe,H000,north,M,40",  # line 28: a label outside the known
        "export/404/gone.png,yes,H404,north,M,40",  # line 29: not there
    ]
    _write(root / "labels.csv", lines)
    with pytest.raises(LabelFileError) as info:
        read_table(root, HOSPITAL_TABLE)
    message = str(info.value)
    assert "1 row(s) with an empty 'file' cell: line 27" in message
    assert "1 row(s) with a 'finding' outside ['no', 'yes']: line 28: 'maybe'" in message
    assert "1 path(s) listed with two labels" in message
    assert "(line 6: " in message
    assert "; line 26: " in message
    assert "images that" in message
    assert "do not exist: line 29:" in message
    assert "data.table.labels" in message
    assert "remove the wrong rows" in message
    assert len(message.splitlines()) == 6  # the heading, four problems, the note on lines


def test_an_exact_repeat_is_dropped_and_counted_or_refused(tmp_path: Path, caplog):
    root = hospital_copy(tmp_path / "hospital")
    lines = _lines(root / "labels.csv")
    _write(root / "labels.csv", [*lines, lines[3], lines[3], lines[7]])
    once = pd.read_csv(root / "labels.csv").drop_duplicates()
    with caplog.at_level(logging.WARNING):
        table = read_table(root, HOSPITAL_TABLE)
    assert len(table) == len(once) == len(lines) - 1
    assert table["path"].is_unique
    assert "3 row(s) repeating an earlier row (the same path, label and split)" in caplog.text
    assert "line 26 (as line 4)" in caplog.text
    with pytest.raises(LabelFileError, match=r"3 row\(s\) repeating.*duplicates=drop"):
        read_table(root, {**HOSPITAL_TABLE, "duplicates": "error"})


def test_test_images_listed_twice_are_scored_once(tmp_path: Path) -> None:
    """Evaluating a file whose test rows appear twice weighted them twice (recall 0.933 ->
    0.700 in the report that found it); the repeats now leave the listing as it was."""
    root = hospital_copy(tmp_path / "hospital")
    labels = pd.read_csv(root / "labels.csv")
    labels["split"] = ["test" if int(m[1:]) >= 8 else "train" for m in labels["mrn"]]
    labels.to_csv(root / "labels.csv", index=False)
    spec = {**HOSPITAL_TABLE, "columns": {**HOSPITAL_TABLE["columns"], "split": "split"}}
    before = evaluation_listing(root, spec, ["NORMAL", "PNEUMONIA"])
    test = labels[labels["split"] == "test"]
    pd.concat([labels, test, test]).to_csv(root / "labels.csv", index=False)
    after = evaluation_listing(root, spec, ["NORMAL", "PNEUMONIA"])
    assert after.files == before.files
    assert after.labels == before.labels


def test_one_image_in_two_splits_is_refused(tmp_path: Path) -> None:
    root = hospital_copy(tmp_path / "hospital")
    labels = pd.read_csv(root / "labels.csv")
    labels["split"] = "train"
    twice = labels.iloc[[0]].assign(split="test")
    pd.concat([labels, twice]).to_csv(root / "labels.csv", index=False)
    spec = {**HOSPITAL_TABLE, "columns": {**HOSPITAL_TABLE["columns"], "split": "split"}}
    with pytest.raises(LabelFileError, match=r"1 path\(s\) listed in two splits.*line 2: train"):
        read_table(root, spec)


def test_rsna_targets_outside_zero_and_one_are_refused_with_their_lines(tmp_path: Path):
    root = rsna_copy(tmp_path / "rsna")
    lines = _lines(root / "stage_2_train_labels.csv")
    lines[2] = lines[2].rsplit(",", 1)[0] + ",2"  # silently NORMAL before
    lines[3] = lines[3].rsplit(",", 1)[0] + ","  # a raw ValueError before
    lines.append(lines[4].rsplit(",", 1)[0] + ",0")  # line 6's image is also Target 0
    _write(root / "stage_2_train_labels.csv", lines)
    with pytest.raises(LabelFileError) as info:
        read_table(root, {"reader": "rsna"})
    message = str(info.value)
    assert "1 row(s) with a 'Target' outside ['0', '1']: line 3: '2'" in message
    assert "1 row(s) with an empty 'Target' cell: line 4" in message
    assert "1 image(s) with rows of Target 0 and rows of Target 1" in message
    assert "RSNA's Target is 1" in message


def test_chexpert_labels_outside_its_vocabulary_name_the_file_and_line(tmp_path: Path):
    root = chexpert_copy(tmp_path)
    lines = _lines(root / "valid.csv")
    cells = lines[1].split(",")
    cells[5 + 7] = "2.0"  # the Pneumonia column
    lines[1] = ",".join(cells)
    _write(root / "valid.csv", lines)
    with pytest.raises(LabelFileError, match=r"'Pneumonia' outside.*valid.csv line 2: '2.0'"):
        read_table(root, {"reader": "chexpert"})


def test_a_latin1_file_names_the_line_and_reads_with_the_encoding_option(tmp_path: Path):
    root = hospital_copy(tmp_path / "hospital")
    labels = pd.read_csv(root / "labels.csv")
    labels["site"] = ["Zürich" if i == 4 else s for i, s in enumerate(labels["site"])]
    labels.to_csv(root / "labels.csv", index=False, encoding="latin-1")
    with pytest.raises(LabelFileError, match=r"not utf-8 text: line 6 holds the byte 0xfc") as e:
        read_table(root, HOSPITAL_TABLE)
    assert "data.table.encoding=latin-1" in str(e.value)
    table = read_table(root, {**HOSPITAL_TABLE, "encoding": "latin-1"})
    assert "Zürich" in set(table["site"])
    with pytest.raises(InputValueError, match="encoding='klingon'"):
        read_table(root, {**HOSPITAL_TABLE, "encoding": "klingon"})


def test_a_utf8_file_with_a_byte_order_mark_reads(tmp_path: Path) -> None:
    root = hospital_copy(tmp_path / "hospital")
    text = (root / "labels.csv").read_text()
    (root / "labels.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())  # as Excel saves it
    assert len(read_table(root, HOSPITAL_TABLE)) == len(text.splitlines()) - 1


def test_a_semicolon_file_is_read_and_a_wrong_separator_is_named(tmp_path: Path) -> None:
    root = hospital_copy(tmp_path / "hospital")
    expected = read_table(root, HOSPITAL_TABLE)
    labels = pd.read_csv(root / "labels.csv", dtype=str)
    labels.to_csv(root / "labels.csv", index=False, sep=";")  # a European Excel's CSV
    pd.testing.assert_frame_equal(read_table(root, HOSPITAL_TABLE), expected)
    with pytest.raises(LabelFileError, match="separated by ';': the separator is the problem"):
        read_table(root, {**HOSPITAL_TABLE, "separator": ","})
    with gzip.open(root / "labels.csv.gz", "wt") as f:
        labels.to_csv(f, index=False, sep="\t")
    assert len(read_table(root, {**HOSPITAL_TABLE, "file": "labels.csv.gz"})) == len(expected)


def test_an_image_the_mimic_split_file_leaves_out_is_counted_named_and_dropped(
    tmp_path: Path, caplog
) -> None:
    root = mimic_copy(tmp_path / "mimic")
    path = root / "mimic-cxr-2.0.0-split.csv.gz"
    with gzip.open(path, "rt") as f:
        lines = f.read().splitlines()
    gone = next(line for line in lines if "2a2277a9" in line)  # the train PNEUMONIA image
    with gzip.open(path, "wt") as f:
        f.write("\n".join(line for line in lines if line != gone) + "\n")
    with caplog.at_level(logging.WARNING):
        table = read_table(root, {"reader": "mimic"})
    assert sorted(table["split"]) == ["test", "train", "val"]
    assert "1 of 4 images have no split, left out (data.table.no_split=drop)" in caplog.text
    assert "2a2277a9" in caplog.text
    pooled = read_table(root, {"reader": "mimic", "no_split": "train"})
    assert len(pooled) == 4
    assert pooled["split"].isna().sum() == 1
    with pytest.raises(LabelFileError, match=r"1 row\(s\) without a split.*2a2277a9"):
        read_table(root, {"reader": "mimic", "no_split": "error"})
    with pytest.raises(InputValueError, match="no_split='keep'; valid: train, drop, error"):
        read_table(root, {"reader": "mimic", "no_split": "keep"})


def test_nih_images_outside_the_official_lists_and_unknown_findings(tmp_path: Path, caplog):
    root = nih_copy(tmp_path / "nih")
    listed = _lines(root / "test_list.txt")
    _write(root / "test_list.txt", listed[1:])  # 00000004_000.png in neither list now
    with caplog.at_level(logging.WARNING):
        table = read_table(root, {"reader": "nih"})
    assert not table["path"].str.endswith("00000004_000.png").any()
    assert "1 of 6 images have no split, left out" in caplog.text
    lines = _lines(root / "Data_Entry_2017_v2020.csv")
    lines[3] = lines[3].replace("Pneumonia|Infiltration", "pneumonia")  # NORMAL or dropped
    lines[4] = lines[4].replace("No Finding", "")
    _write(root / "Data_Entry_2017_v2020.csv", lines)
    with pytest.raises(LabelFileError) as info:
        read_table(root, {"reader": "nih"})
    assert "outside NIH's 15: line 4: 'pneumonia'" in str(info.value)
    assert "1 row(s) with an empty 'Finding Labels' cell: line 5" in str(info.value)


def test_a_real_label_file_with_a_repeat_and_a_conflict(kermany_224: Path, tmp_path: Path):
    """A manifest over the real Kermany files: the repeat is dropped, the conflict refused."""
    files = sorted((kermany_224 / "val" / "NORMAL").glob("*.jpeg"))[:4]
    files += sorted((kermany_224 / "val" / "PNEUMONIA").glob("*.jpeg"))[:4]
    labels = pd.DataFrame({"path": [str(f) for f in files],
                           "label": [f.parent.name for f in files]})  # fmt: skip
    labels.to_csv(tmp_path / "labels.csv", index=False)
    spec = {"reader": "manifest", "file": str(tmp_path / "labels.csv")}
    assert len(read_table(tmp_path, spec)) == 8
    pd.concat([labels, labels.iloc[[2]]]).to_csv(tmp_path / "labels.csv", index=False)
    assert len(read_table(tmp_path, spec)) == 8
    wrong = labels.iloc[[5]].assign(label="NORMAL")
    pd.concat([labels, wrong]).to_csv(tmp_path / "labels.csv", index=False)
    with pytest.raises(LabelFileError, match=r"1 path\(s\) listed with two labels.*line 10"):
        read_table(tmp_path, spec)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("file,finding\nexport/000/IMG0,no\nexport/000/img1,png,no\n",
         r"line 3 has 3 cells, more than its header.*needs quotes"),
        ("", r"is empty: not even a header line"),
    ],
)  # fmt: skip
def test_a_file_pandas_cannot_parse_is_named_in_the_projects_words(
    tmp_path: Path, text: str, message: str
) -> None:
    root = hospital_copy(tmp_path / "hospital")
    (root / "labels.csv").write_text(text)
    with pytest.raises(LabelFileError, match=message) as info:
        read_table(root, HOSPITAL_TABLE)
    assert "ParserError" not in str(info.value)
    assert "EmptyDataError" not in str(info.value)


def test_a_wrong_row_policy_is_refused_before_any_file_is_read(tmp_path: Path) -> None:
    for option, value in (("duplicates", "keep"), ("separator", ";;")):
        with pytest.raises(InputValueError, match=f"data.table.{option}="):
            read_table(tmp_path / "nowhere", {**HOSPITAL_TABLE, option: value})
