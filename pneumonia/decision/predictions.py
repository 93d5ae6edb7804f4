"""Per-image predictions: the one decision rule for a row, and the one ``predictions.csv``.

Evaluate, predict, the API and the training epochs all hold their results as
:class:`Predictions` and turn probabilities into classes through :func:`prediction_rows`.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from pneumonia.errors import InputNotFoundError, InputValueError
from pneumonia.system.files import atomic_open
from pneumonia.system.sheets import from_sheet, sheet_cell, sheet_text

# What evaluate and predict write into their output folder.
PREDICTIONS = "predictions.csv"
# A training run's prediction for each of its validation images (k-fold: the out-of-fold rows),
# in its run folder; the same layout.
VAL_PREDICTIONS = "val_predictions.csv"
# The one layout of predictions.csv and of the API's tables. label: the true class where it is
# known (evaluate), else empty; shift_score and in_distribution: how unlike the training images
# an image is (pneumonia.decision.shift; empty for a checkpoint without a shift reference);
# error: why an input has no probability. Images from a table (pneumonia.data.table) add
# their attributes (patient_id, study_id, source, sex, age, view ...) as further columns, after
# these.
PREDICTION_COLUMNS = ("file", "label", "probability", "prediction", "threshold", "shift_score",
                      "in_distribution", "error")  # fmt: skip
# The columns a predictions.csv must have to be read back (comparing, aggregating folds).
REQUIRED_COLUMNS = ("file", "label", "probability", "prediction", "threshold")


@dataclass
class Predictions:
    """Images with their calibrated PNEUMONIA probability, their true class and the threshold.

    A training epoch's predictions have no files; an evaluation's have one per image.
    """

    probs: torch.Tensor  # (N,) calibrated PNEUMONIA probability
    targets: torch.Tensor  # (N,) 1 = PNEUMONIA (the positive class), 0 = NORMAL
    threshold: float  # PNEUMONIA above it
    files: list[Path] = field(default_factory=list)
    scores: torch.Tensor | None = None  # (N,) logit differences, before calibration
    shift: torch.Tensor | None = None  # (N,) shift scores (pneumonia.decision.shift)
    shift_threshold: float | None = None  # in distribution: shift <= shift_threshold
    attributes: list[dict[str, Any]] | None = None  # per image: a table's further columns

    @property
    def in_distribution(self) -> torch.Tensor | None:
        """(N,) whether each image looks like the training images (None: no shift scores)."""
        return None if self.shift is None else self.shift <= self.shift_threshold

    def subset(self, keep: torch.Tensor) -> Predictions:
        """The images where the boolean ``keep`` is true."""
        pick = torch.nonzero(keep).flatten().tolist()

        def take(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[pick]

        return Predictions(
            self.probs[pick],
            self.targets[pick],
            self.threshold,
            files=[self.files[i] for i in pick] if self.files else [],
            scores=take(self.scores),
            shift=take(self.shift),
            shift_threshold=self.shift_threshold,
            attributes=None if self.attributes is None else [self.attributes[i] for i in pick],
        )

    def confident_mistakes(self, k: int = 8) -> list[int]:
        """Indices of the ``k`` wrong predictions farthest from the threshold, worst first."""
        predicted = (self.probs > self.threshold).long()
        wrong = torch.nonzero(predicted != self.targets).flatten()
        margin = (self.probs[wrong] - self.threshold).abs()
        return wrong[torch.argsort(margin, descending=True)][:k].tolist()

    def rows(self, class_names: Sequence[str], positive_index: int) -> list[dict[str, Any]]:
        """One row of ``predictions.csv`` per image, its true class in ``label``."""
        return prediction_rows(
            [str(f) for f in self.files],
            self.probs.tolist(),
            threshold=self.threshold,
            class_names=class_names,
            positive_index=positive_index,
            targets=self.targets.tolist(),
            shift_scores=None if self.shift is None else self.shift.tolist(),
            shift_threshold=self.shift_threshold,
            attributes=self.attributes,
        )


def prediction_rows(
    names: Sequence[str],
    probs: Sequence[float | None],
    *,
    threshold: float,
    class_names: Sequence[str],
    positive_index: int,
    targets: Sequence[int] | None = None,
    errors: Mapping[int, str] | None = None,
    shift_scores: Sequence[float | None] | None = None,
    shift_threshold: float | None = None,
    attributes: Sequence[Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Rows with the keys of :data:`PREDICTION_COLUMNS`: the class at ``threshold`` (positive
    when the probability is above it), or, where the probability is None, the input's error.

    Args:
        targets: 1 where the true class is the positive one (evaluate), None when unknown.
        errors: input index -> why it has no probability.
        shift_scores: each input's shift score, in distribution at most ``shift_threshold``;
            None where the checkpoint has no shift reference.
        attributes: each input's further columns (from a table), added after the others.
    """
    positive, negative = class_names[positive_index], class_names[1 - positive_index]
    rows = []
    for i, (name, prob) in enumerate(zip(names, probs, strict=True)):
        label = "" if targets is None else (positive if targets[i] else negative)
        row = {"file": name, "label": label, "probability": prob, "threshold": threshold}
        shift = None if shift_scores is None else shift_scores[i]
        row |= {
            "shift_score": shift,
            "in_distribution": "" if shift is None else bool(shift <= shift_threshold),
        }
        if prob is None:
            row |= {"prediction": "", "error": (errors or {}).get(i) or "no probability"}
        else:
            row |= {"prediction": positive if prob > threshold else negative, "error": ""}
        if attributes is not None:
            row |= {k: v for k, v in attributes[i].items() if k not in PREDICTION_COLUMNS}
        rows.append(row)
    return rows


def write_predictions(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """Write ``rows`` as ``predictions.csv``, atomically (complete or absent); numbers with
    six decimals, missing values empty, and no text (a file name, a label file's cell, an
    error) that a spreadsheet would run as a formula (:func:`~pneumonia.system.sheets.sheet_cell`;
    :func:`read_predictions` undoes it)."""
    rows = list(rows)
    columns = prediction_columns(rows)
    with atomic_open(path, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="raise")
        writer.writerow({c: sheet_text(str(c)) for c in columns})  # a label file's column names
        writer.writerows({c: sheet_cell(row.get(c)) for c in columns} for row in rows)


def prediction_columns(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """:data:`PREDICTION_COLUMNS`, then any attribute columns of ``rows`` in first-seen order."""
    columns = dict.fromkeys(PREDICTION_COLUMNS)
    for row in rows:
        columns.update(dict.fromkeys(row))
    return list(columns)


def read_predictions(path: str | Path) -> pd.DataFrame:
    """A ``predictions.csv`` (or ``val_predictions.csv``) as written: text cells, missing
    values empty, its columns checked, and the apostrophe that kept a text from being a
    formula taken off again (``'=1+1.png`` -> ``=1+1.png``).

    Raises:
        InputNotFoundError: no such file.
        InputValueError: not a predictions.csv (unparseable, or without its columns).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputNotFoundError(
            f"{path} does not exist: pass a {PREDICTIONS} written by pneumonia-evaluate (in its "
            "output folder) or a checkpoint."
        )
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise InputValueError(
            f"{path} is not a {PREDICTIONS} ({type(e).__name__}: {e}). Pass the {PREDICTIONS} "
            "that pneumonia-evaluate writes."
        ) from e
    table.columns = [from_sheet(str(c)) for c in table.columns]
    for i in range(table.shape[1]):
        guarded = table.iloc[:, i].str.startswith("'")
        if guarded.any():
            table.iloc[guarded.to_numpy(), i] = table.iloc[guarded.to_numpy(), i].map(from_sheet)
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise InputValueError(
            f"{path} is not a {PREDICTIONS}: no column {', '.join(missing)} (its columns: "
            f"{', '.join(map(str, table.columns[:8]))}). Pass the {PREDICTIONS} that "
            "pneumonia-evaluate writes."
        )
    return table


def positive_index(classes: Sequence[str], positive: str) -> int:
    """Where ``positive`` (model.positive_class) is among the data's classes.

    Raises:
        InputValueError: it is not one of them; the one that matches but for case is named.
    """
    if positive not in classes:
        alike = [c for c in classes if c.lower() == str(positive).lower()]
        raise InputValueError(
            f"model.positive_class={positive!r} is not one of the classes {list(classes)}. Set "
            "model.positive_class to the class folder that holds the pneumonia images"
            + (f": model.positive_class={alike[0]}." if alike else ".")
        )
    return list(classes).index(positive)


def positive_class(table: pd.DataFrame) -> str:
    """The class a predictions table calls above its threshold (its rows say it); the
    ``probability`` and ``threshold`` columns as numbers."""
    above = table[table["probability"] > table["threshold"]]
    if len(above):
        return str(above["prediction"].iloc[0])
    below = set(table.loc[table["probability"] <= table["threshold"], "prediction"])
    others = set(table["label"]) - below
    return str(others.pop()) if others else "PNEUMONIA"
