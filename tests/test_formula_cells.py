"""Nothing from a user's files is a formula (issue 28, rule 2): every CSV the tool writes
(predictions.csv, val_predictions.csv, compare's predictions_a.csv, aggregate.csv) gives a text
cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return a leading
apostrophe; the numbers it writes stay numbers, and its own reader gives every text back
exactly."""

from __future__ import annotations

import csv
import io
import random
from pathlib import Path

import pytest

from pneumonia.decision.predictions import prediction_rows, read_predictions, write_predictions
from pneumonia.system.sheets import TRIGGERS, from_sheet, sheet_cell, sheet_text

TRICKY = [
    "=1+1.png", "+1.png", "-1.png", "@SUM(A1).png", "\t=1.png", "\r=1.png", "'abc.png", "'=1.png",
    "''=1.png", "'''+x", "'", "''", "'a'", "a'=", "=", "-", "@", "", " =1", "=HYPERLINK(\"x\")",
    "+cmd|' /C calc'!A0", "-2.5", "a,b", 'a"b', "a\nb", "é=∑",
]  # fmt: skip


def tricky(seed: int = 0, count: int = 400) -> list[str]:
    """:data:`TRICKY`, and random strings of apostrophes, triggers and others."""
    rng = random.Random(seed)
    alphabet = "'''" + TRIGGERS + 'ab1 ,"\n'
    return TRICKY + ["".join(rng.choices(alphabet, k=rng.randint(1, 8))) for _ in range(count)]


def raw_cells(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_sheet_text_guards_every_trigger_and_from_sheet_undoes_it_exactly() -> None:
    for text in tricky():
        cell = sheet_text(text)
        assert not cell.startswith(tuple(TRIGGERS)), repr(text)
        assert from_sheet(cell) == text, repr(text)
        assert cell == text or cell == "'" + text  # one apostrophe at most, only where needed
    assert sheet_text("=1+1.png") == "'=1+1.png"
    assert sheet_text("'abc.png") == "'abc.png"  # no trigger after it: as it is
    assert sheet_text("'=1.png") == "''=1.png"  # would read back one apostrophe short
    assert from_sheet("'abc") == "'abc"  # not written by sheet_text: as it is


def test_predictions_csv_round_trips_every_name_label_error_and_attribute(tmp_path: Path) -> None:
    """Each tricky string as a file name, a class name, an error, an attribute cell and an
    attribute column's name: written guarded, read back exactly by read_predictions (which
    compare, aggregate and the API use)."""
    names = tricky()
    n = len(names)
    probs = [None if i % 7 == 0 else (i % 10) / 10 for i in range(n)]
    rows = prediction_rows(
        names, probs, threshold=0.5, class_names=["=NORMAL", "-PNEUMONIA"], positive_index=1,
        targets=[i % 2 for i in range(n)], errors={i: names[-1 - i] for i in range(0, n, 7)},
        shift_scores=[-1.25 - i for i in range(n)], shift_threshold=-3.0,
        attributes=[{"=sex": names[(i * 7) % n], "age": -i, "score": -0.5 * i} for i in range(n)],
    )  # fmt: skip
    path = tmp_path / "predictions.csv"
    write_predictions(path, rows)
    cells = raw_cells(path)
    header, body = cells[0], cells[1:]
    text_columns = {"file", "label", "prediction", "error", "=sex"}
    for row in body:
        for column, cell in zip(header, row, strict=True):
            if from_sheet(column) in text_columns:
                assert not cell.startswith(tuple(TRIGGERS)), (column, cell)
    assert "'=sex" in header
    # the numbers the tool writes stay numbers: a negative one keeps its bare minus
    column = {from_sheet(c): i for i, c in enumerate(header)}
    assert [r[column["shift_score"]] for r in body[:2]] == ["-1.250000", "-2.250000"]
    assert [r[column["age"]] for r in body[:2]] == ["0", "-1"]
    assert body[1][column["score"]] == "-0.500000"
    table = read_predictions(path)
    assert table["file"].tolist() == names
    assert table["=sex"].tolist() == [names[(i * 7) % n] for i in range(n)]
    assert set(table["label"]) == {"=NORMAL", "-PNEUMONIA"}
    assert table["error"].tolist() == [r["error"] for r in rows]
    assert table["shift_score"].tolist()[:2] == ["-1.250000", "-2.250000"]


def test_aggregate_csv_guards_settings_and_metric_names_and_keeps_numbers() -> None:
    from pneumonia.aggregate import table

    result = {
        "groups": [
            {"setting": {"=key": "-1e-3", "model.lr": "@x"},
             "metrics": {"=cmd|' /C calc'!A0": {"n": 3, "mean": -0.5, "std": 0.1,
                                                 "ci_low": -0.75, "ci_high": -0.25}}},
        ]
    }  # fmt: skip
    (header, row) = list(csv.reader(io.StringIO(table(result))))
    assert header[:3] == ["'=key", "model.lr", "metric"]
    assert row[:3] == ["'-1e-3", "'@x", "'=cmd|' /C calc'!A0"]
    assert [float(x) for x in row[3:]] == [3, -0.5, 0.1, -0.75, -0.25]  # numbers, bare minus


def test_a_number_cell_is_a_number_and_text_is_guarded() -> None:
    import numpy as np

    assert [sheet_cell(v) for v in (-1.5, -2, np.int64(-3), True, None)] == [
        "-1.500000", "-2", "-3", "True", "",
    ]  # fmt: skip
    assert sheet_cell("-2") == "'-2"  # text that looks like a number is still text


@pytest.mark.slow
def test_predict_writes_formula_names_as_text_and_reads_them_back(
    trained: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real path: predict in a folder of images named like formulas (``input=.``, so the
    file cells are the bare names); its predictions.csv holds no cell a spreadsheet would run,
    and read_predictions gives the names back."""
    from pneumonia.config import compose
    from pneumonia.predict import predict

    folder = tmp_path / "incoming"
    folder.mkdir()
    stems = ["=1+1", "+1", "-1", "@SUM(A1)", "'abc", "'=x"]
    sources = sorted((trained["root"] / "test").rglob("*.jpeg"))
    for stem, source in zip(stems, sources, strict=False):
        (folder / f"{stem}.jpeg").write_bytes(source.read_bytes())
    out = tmp_path / "p"
    monkeypatch.chdir(folder)
    predict(compose("predict", [f"ckpt_path={trained['ckpt']}", "accelerator=cpu",
                                "precision=32-true", "input=.", f"output_dir={out}"],
                    output_dir=tmp_path))  # fmt: skip
    path = out / "predictions.csv"
    cells = raw_cells(path)
    files = [row[cells[0].index("file")] for row in cells[1:]]
    assert not [f for f in files if f.startswith(tuple(TRIGGERS))]
    assert sorted(files) == sorted(sheet_text(f"{s}.jpeg") for s in stems)
    assert sorted(read_predictions(path)["file"]) == sorted(f"{s}.jpeg" for s in stems)
