"""The one rule for a row of predictions.csv, and the Predictions that hold an evaluation."""

from __future__ import annotations

from pathlib import Path

import torch

from pneumonia.decision.predictions import PREDICTION_COLUMNS, Predictions, prediction_rows

NAMES = ["NORMAL", "PNEUMONIA"]


def test_a_row_is_positive_only_above_the_threshold_and_names_its_error() -> None:
    rows = prediction_rows(
        ["a", "b", "c", "d"],
        [0.2, 0.5, 0.51, None],
        threshold=0.5,
        class_names=NAMES,
        positive_index=1,
        targets=[0, 1, 1, 0],
        errors={3: "not a readable image"},
    )
    assert [set(r) for r in rows] == [set(PREDICTION_COLUMNS)] * 4
    assert [r["prediction"] for r in rows] == ["NORMAL", "NORMAL", "PNEUMONIA", ""]
    assert [r["label"] for r in rows] == ["NORMAL", "PNEUMONIA", "PNEUMONIA", "NORMAL"]
    assert rows[3]["error"] == "not a readable image"
    assert all(r["error"] == "" for r in rows[:3])
    assert all(r["shift_score"] is None and r["in_distribution"] == "" for r in rows)


def test_the_positive_class_may_come_first() -> None:
    (row,) = prediction_rows(["a"], [0.9], threshold=0.5, class_names=["PNEUMONIA", "normal"],
                             positive_index=0, targets=[1])  # fmt: skip
    assert (row["prediction"], row["label"]) == ("PNEUMONIA", "PNEUMONIA")


def test_shift_scores_say_in_distribution_at_or_below_their_threshold() -> None:
    rows = prediction_rows(
        ["a", "b", "c"],
        [0.1, 0.1, None],
        threshold=0.5,
        class_names=NAMES,
        positive_index=1,
        shift_scores=[3.0, 3.5, None],
        shift_threshold=3.0,
    )
    assert [r["in_distribution"] for r in rows] == [True, False, ""]


def test_a_subset_keeps_every_field_aligned_and_mistakes_are_sorted() -> None:
    preds = Predictions(
        torch.tensor([0.9, 0.2, 0.6, 0.05, 0.99]),
        torch.tensor([0, 1, 0, 0, 1]),
        0.5,
        files=[Path(str(i)) for i in range(5)],
        shift=torch.tensor([1.0, 5.0, 2.0, 9.0, 0.5]),
        shift_threshold=4.0,
    )
    assert preds.in_distribution.tolist() == [True, False, True, False, True]
    inside = preds.subset(preds.in_distribution)
    assert inside.files == [Path("0"), Path("2"), Path("4")]
    assert inside.probs.tolist() == [0.8999999761581421, 0.6000000238418579, 0.9900000095367432]
    assert inside.targets.tolist() == [0, 0, 1]
    assert inside.shift.tolist() == [1.0, 2.0, 0.5]
    assert preds.confident_mistakes() == [0, 1, 2]  # wrong, farthest from 0.5 first
