"""``data=manifest``: any label file (CSV or parquet) with one row per image.

Which column holds what is configurable (``data.table.columns``), and so are the label values
of each class (``data.table.labels``). Every other column of the file travels along as an
attribute, into ``predictions.csv`` and the API's tables.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from pneumonia.data.readers.common import (
    class_of,
    finish,
    read_label_file,
    require_columns,
    typed,
)
from pneumonia.data.readers.rows import LabelFileError, RowCheck, RowRules, normal_text

FIELDS = ("path", "label", "patient_id", "study_id", "split", "source")
DEFAULT_COLUMNS = {"path": "path", "label": "label"}
DEFAULT_LABELS = {
    "NORMAL": [0, "NORMAL", "normal", "negative"],
    "PNEUMONIA": [1, "PNEUMONIA", "pneumonia", "positive"],
}


def read(
    root: Path,
    *,
    file: str = "labels.csv",
    columns: Mapping[str, str | None] | None = None,
    labels: Mapping[str, Sequence[Any]] | None = None,
    source: str | None = None,
    image_dir: str | None = None,
    rules: RowRules | None = None,
) -> pd.DataFrame:
    """The table of a label file.

    Args:
        root: the collection's folder; ``file`` and relative image paths are under it.
        file: the label file (``.csv``, ``.csv.gz``, ``.parquet``), relative to ``root``.
        columns: the file's column for each field of :data:`FIELDS` (None: not in the file);
            ``path`` and ``label`` are required.
        labels: ``{class name: [label values]}``; a value outside them is an error.
        source: the source of rows without a ``source`` column (default: the file's stem).
        image_dir: the folder relative paths start from, relative to ``root`` (default root).
        rules: how the file is read and its rows checked; a row without a split (where the
            file has a split column) joins the training pool unless they say otherwise.

    Raises:
        LabelFileError: a missing column; every row problem (an empty path or label, a label
            value outside ``labels``, a path with two labels, a path that does not exist ...)
            in one message.
    """
    path = Path(file).expanduser()
    path = path if path.is_absolute() else root / path
    raw = read_label_file(path, "label file", rules)
    chosen = {**DEFAULT_COLUMNS, **(columns or {})}
    unknown = sorted(set(chosen) - set(FIELDS))
    if unknown:
        raise LabelFileError(f"data.table.columns has unknown fields {unknown}; known: {FIELDS}")
    given = {field: column for field, column in chosen.items() if column}
    fix = "Name the file's columns with data.table.columns.<field>=<column>."
    require_columns(raw, given.values(), path, fix)
    table = raw.rename(columns={column: field for field, column in given.items()})
    others = [c for c in raw.columns if c not in given.values()]
    table = typed(table[[*given, *others]], ("patient_id", "study_id", "split", "source"))
    check = RowCheck(path)
    table = _labelled(table, labels or DEFAULT_LABELS, check, given)
    base = root / image_dir if image_dir else root
    table["path"] = [str(p if Path(p).is_absolute() else base / p) for p in table["path"]]
    return finish(
        table,
        path,
        source=source or path.name.split(".")[0],
        fix=f"Paths are relative to {base} (data.table.image_dir).",
        check=check,
        rules=rules,
    )


def _labelled(
    table: pd.DataFrame, labels: Mapping[str, Sequence[Any]], check: RowCheck,
    columns: Mapping[str, str],
) -> pd.DataFrame:  # fmt: skip
    """The rows with a path and a known label value, labelled with its class; the others are
    recorded in ``check`` under the file's own column names."""
    lookup = class_of(labels)
    named = table.rename(columns={"path": columns["path"], "label": columns["label"]})
    fix = (
        f"The known values are { {name: list(v) for name, v in labels.items()} }: map them "
        "with data.table.labels.<CLASS>=[...], or remove those rows."
    )
    keep = check.cells(named, columns["path"]) & check.cells(named, columns["label"],
                                                             known=lookup, fix=fix)  # fmt: skip
    table = table[keep].copy()
    table["label"] = [lookup[normal_text(v)] for v in table["label"]]
    return table
