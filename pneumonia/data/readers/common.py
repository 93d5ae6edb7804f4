"""What every label-file reader shares: the table's checks and the DICOM header's columns.

A reader turns its collection's files into the table of :mod:`pneumonia.data.table` (``path``,
``label`` as a class name, ``patient_id``, ``study_id``, ``split``, ``source``, attributes)
and hands it to :func:`finish`, which refuses what cannot be used, with the way out.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from pneumonia.data.dicom import DicomError, dicom_attributes, is_dicom
from pneumonia.data.index import DataLayoutError
from pneumonia.data.table import split_name
from pneumonia.errors import InputValueError

log = logging.getLogger(__name__)

CLASSES = ("NORMAL", "PNEUMONIA")
FRONTAL = ("PA", "AP")
HEADER_COLUMNS = ("patient_id", "study_id", "sex", "age", "view")
EXAMPLES = 5


class LabelFileError(DataLayoutError):
    """A label file that cannot be read as the table of images it should be."""


def read_label_file(path: Path, what: str) -> pd.DataFrame:
    """A CSV (also ``.csv.gz``) or parquet label file, every column as read.

    Raises:
        LabelFileError: missing or unreadable, or parquet without pyarrow (naming the extra).
    """
    if not path.is_file():
        raise LabelFileError(f"The {what} {path} does not exist. {_look(path.parent)}")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            try:
                return pd.read_parquet(path)
            except ImportError as e:
                raise LabelFileError(
                    f'Reading {path} needs pyarrow: pip install "pneumonia[parquet]"'
                ) from e
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except LabelFileError:
        raise
    except Exception as e:
        raise LabelFileError(f"Cannot read the {what} {path}: {type(e).__name__}: {e}") from e


def _look(folder: Path) -> str:
    if not folder.is_dir():
        return f"Its folder {folder} does not exist either."
    names = sorted(p.name for p in folder.iterdir())[:10]
    return f"{folder} holds: {', '.join(names) or 'nothing'}."


def require_columns(table: pd.DataFrame, columns: Iterable[str], where: Path, fix: str) -> None:
    """Raises LabelFileError naming the missing columns, those there are, and ``fix``."""
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise LabelFileError(
            f"{where} has no column {', '.join(repr(c) for c in missing)}; its columns are "
            f"{list(table.columns)}. {fix}"
        )


def examples(values: Sequence[Any]) -> str:
    shown = ", ".join(str(v) for v in values[:EXAMPLES])
    return shown + (f", ... ({len(values)} in all)" if len(values) > EXAMPLES else "")


def check_paths(table: pd.DataFrame, where: Path, fix: str) -> None:
    """Every ``path`` exists.

    Raises:
        LabelFileError: naming how many do not, examples, and ``fix``.
    """
    missing = [p for p in table["path"] if not Path(p).exists()]
    if missing:
        raise LabelFileError(
            f"{len(missing)} of the {len(table)} images that {where} lists do not exist: "
            f"{examples(missing)}. {fix}"
        )


def from_header(table: pd.DataFrame) -> pd.DataFrame:
    """Fill each DICOM row's missing patient, study, sex, age and view from its header."""
    rows = [i for i, p in enumerate(table["path"]) if is_dicom(Path(p))]
    if not rows:
        return table
    wanted = [c for c in HEADER_COLUMNS if c not in table or table[c].isna().any()]
    if not wanted:
        return table
    table = table.copy()
    for column in wanted:
        if column not in table:
            table[column] = None
        table[column] = table[column].astype(object)
    for i in rows:
        try:
            header = dicom_attributes(Path(table.at[i, "path"]))
        except DicomError:
            continue  # the decode reports it as a bad image, under data.on_bad_image
        for column in wanted:
            if pd.isna(table.at[i, column]) and header[column] is not None:
                table.at[i, column] = header[column]
    return table


def check_splits(table: pd.DataFrame, where: Path) -> None:
    """Split values are train/val/test, and no patient is on two sides of the given split.

    Raises:
        LabelFileError: an unknown split value, or patients in two splits (with examples).
    """
    if "split" not in table:
        return
    table["split"] = pd.Series([split_name(v) for v in table["split"]], dtype=object)
    given = [v for v in table["split"] if v is not None and not pd.isna(v)]
    unknown = sorted({v for v in given if v not in ("train", "val", "test")})
    if unknown:
        raise LabelFileError(
            f"{where} gives the splits {unknown}; known: train, val (valid, validation), "
            "test. Rename them, or drop the split column to let the project make a "
            "patient-grouped split."
        )
    if "patient_id" not in table:
        return
    given = table.dropna(subset=["split", "patient_id"])
    sides = given.groupby("patient_id")["split"].nunique()
    shared = sorted(sides[sides > 1].index)
    if shared:
        raise LabelFileError(
            f"{len(shared)} patient(s) are on two sides of the split {where} gives, e.g. "
            f"{examples(shared)}: figures on the later split would count images of patients "
            "the model trained on. Give each patient one split, or drop the split column to "
            "let the project make a patient-grouped split."
        )


def finish(
    table: pd.DataFrame, where: Path, *, source: str, fix: str, header: bool = True
) -> pd.DataFrame:
    """The checked table: paths that exist, the header's columns filled, one side of the
    split per patient, ``source`` where no row names one. Rows keep their order."""
    table = table.reset_index(drop=True)
    if not len(table):
        raise LabelFileError(f"{where} lists no images with a usable label. {fix}")
    check_paths(table, where, fix)
    if header:
        table = from_header(table)
    if "source" not in table:
        table["source"] = source
    else:
        table["source"] = table["source"].fillna(source)
    check_splits(table, where)
    return table


def class_of(values: Mapping[str, Sequence[Any]]) -> dict[str, str]:
    """Label value (as text) -> class name, from ``{class: [values]}``."""
    lookup = {}
    for name, accepted in values.items():
        for value in accepted if isinstance(accepted, (list, tuple)) else [accepted]:
            lookup[normal_text(value)] = name
    return lookup


def typed(table: pd.DataFrame, ids: Iterable[str]) -> pd.DataFrame:
    """Identifier columns (and ``path``, ``label``) as text: a patient ``007`` stays ``007``,
    parquet's integers become text; every other column that is all numbers as numbers
    (``age``)."""
    table = table.copy()
    for column in table.columns:
        values = table[column]
        if column in ids:
            table[column] = [None if pd.isna(v) else id_text(v) for v in values]
        elif column not in ("path", "label") and not pd.api.types.is_numeric_dtype(values):
            with contextlib.suppress(ValueError, TypeError):
                table[column] = pd.to_numeric(values)
    return table


def id_text(value: Any) -> str:
    """An identifier cell as text: text as given (stripped; ``007`` stays), a number from a
    typed file (parquet) without a trailing ``.0``."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def normal_text(value: Any) -> str:
    """A label cell as text: ``1``, ``1.0`` and ``"1"`` alike."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else text


def check_policy(name: str, value: str, valid: Sequence[str]) -> None:
    """Raises InputValueError where ``data.table.<name>`` is not one of ``valid``."""
    if value not in valid:
        raise InputValueError(f"data.table.{name}={value!r}; valid: {', '.join(valid)}")


def left_out(table: pd.DataFrame, keep: pd.Series, why: str, where: Path) -> pd.DataFrame:
    """The rows of ``keep``; how many others were left out, and why, goes to the log."""
    dropped = int((~keep).sum())
    if dropped:
        log.info("%s: %d of %d images left out (%s)", where, dropped, len(table), why)
    return table[keep].reset_index(drop=True)


def frontal_only(table: pd.DataFrame, views: Sequence[str] | None, where: Path) -> pd.DataFrame:
    """Only the rows whose ``view`` is in ``views`` (None: every view; ``FRONTAL`` by default
    in the collections); rows without a view are kept and counted."""
    if views is None or "view" not in table:
        return table
    wanted = {v.upper() for v in views}
    known = table["view"].notna() & table["view"].astype(str).str.strip().ne("")
    unknown = int((~known).sum())
    if unknown:  # kept: an unreadable file is then reported as a bad image, not dropped here
        log.warning("%s: %d images have no view position; kept", where, unknown)
    keep = ~known | table["view"].astype(str).str.strip().str.upper().isin(wanted)
    return left_out(table, keep, f"view not in data.table.views={list(views)}", where)
