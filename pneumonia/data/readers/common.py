"""What every label-file reader shares: reading the file, the table's checks and the DICOM
header's columns.

A reader turns its collection's files into the table of :mod:`pneumonia.data.table` (``path``,
``label`` as a class name, ``patient_id``, ``study_id``, ``split``, ``source``, attributes)
and hands it to :func:`finish`, which refuses what cannot be used, with the way out. The rows
themselves are checked in :mod:`pneumonia.data.readers.rows`; the table's index says where
each row came from (``line 7``), for the messages.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import logging
import lzma
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from pneumonia.data.dicom import DicomError, dicom_attributes, is_dicom
from pneumonia.data.readers.rows import (
    SEPARATORS,
    LabelFileError,
    RowCheck,
    RowRules,
    examples,
    line_index,
    normal_text,
)

log = logging.getLogger(__name__)

CLASSES = ("NORMAL", "PNEUMONIA")
FRONTAL = ("PA", "AP")
HEADER_COLUMNS = ("patient_id", "study_id", "sex", "age", "view")
OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


def read_label_file(path: Path, what: str, rules: RowRules | None = None) -> pd.DataFrame:
    """A CSV (also ``.csv.gz``) or parquet label file, every column as read (CSV cells as
    text); the index names each row's line in the file.

    Raises:
        LabelFileError: missing or unreadable, not in ``rules.encoding`` (naming the line and
            byte), one column where the separator is another, parquet without pyarrow.
    """
    rules = rules or RowRules()
    separator = rules.separator or ","
    if not path.is_file():
        raise LabelFileError(f"The {what} {path} does not exist. {_look(path.parent)}")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            try:
                table = pd.read_parquet(path)
            except ImportError as e:
                raise LabelFileError(
                    f'Reading {path} needs pyarrow: pip install "pneumonia[parquet]"'
                ) from e
            return table.set_axis(line_index(len(table), None))
        text = _text(path, what, rules.encoding)
        separator = rules.separator or _separator(text, path)
        table = pd.read_csv(io.StringIO(text), sep=separator, dtype=str, keep_default_na=False,
                            na_values=[""])  # fmt: skip
    except LabelFileError:
        raise
    except pd.errors.EmptyDataError as e:
        raise LabelFileError(f"The {what} {path} is empty: not even a header line.") from e
    except pd.errors.ParserError as e:
        line = re.search(r"line (\d+), saw (\d+)", str(e))
        where = f"line {line[1]} has {line[2]} cells" if line else "a line has more cells"
        raise LabelFileError(
            f"Cannot read the {what} {path}: {where}, more than its header. A cell holding "
            f"the separator {separator!r} needs quotes, or the separator is another "
            "(data.table.separator)."
        ) from e
    except Exception as e:
        raise LabelFileError(f"Cannot read the {what} {path}: {type(e).__name__}: {e}") from e
    _one_column(table, path, separator)
    return table.set_axis(line_index(len(table), len(text.splitlines())))


def _text(path: Path, what: str, encoding: str) -> str:
    """The file's text; a byte-order mark is no part of the first column's name."""
    with OPENERS.get(path.suffix.lower(), open)(path, "rb") as f:
        data = f.read()
    codec = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
    try:
        return data.decode(codec)
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise LabelFileError(
            f"The {what} {path} is not {encoding} text: line {line} holds the byte "
            f"0x{data[e.start]:02x} (byte {e.start} of the file), which {encoding} cannot read. "
            "A file saved by Excel or an older system is often latin-1 (or cp1252): read it "
            "with data.table.encoding=latin-1, or save it as UTF-8."
        ) from e


def _separator(text: str, path: Path) -> str:
    """The separator of the header line: the most frequent of , ; tab | outside quotes (a
    ``.tsv``: tab); a header of one column: a comma."""
    if path.name.lower().removesuffix(".gz").endswith(".tsv"):
        return "\t"
    header = re.sub(r'"[^"]*"', "", text.split("\n", 1)[0])
    counts = {s: header.count(s) for s in SEPARATORS}
    best = max(SEPARATORS, key=lambda s: counts[s])  # ties: the first, a comma
    if counts[best] and best != ",":
        log.info("%s: columns separated by %r (data.table.separator)", path, best)
    return best if counts[best] else ","


def _one_column(table: pd.DataFrame, path: Path, separator: str) -> None:
    """A file read as one column whose name holds another separator was split wrongly."""
    if len(table.columns) != 1:
        return
    inside = [s for s in SEPARATORS if s != separator and s in str(table.columns[0])]
    if inside:
        raise LabelFileError(
            f"{path} reads as one column {str(table.columns[0])!r} with the separator "
            f"{separator!r}, but its header is separated by {inside[0]!r}: the separator is "
            f"the problem, not the columns. Set data.table.separator={inside[0]!r} (or null "
            "to detect it)."
        )


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


def check_patients(table: pd.DataFrame, where: Path) -> None:
    """No patient is on two sides of the split the table gives.

    Raises:
        LabelFileError: patients in two splits (with examples).
    """
    if "split" not in table or "patient_id" not in table:
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
    table: pd.DataFrame,
    where: Path,
    *,
    source: str,
    fix: str,
    header: bool = True,
    check: RowCheck | None = None,
    rules: RowRules | None = None,
    no_split: str = "train",
) -> pd.DataFrame:
    """The checked table: every row through :class:`RowCheck` (with what the reader found,
    ``check``) and every problem raised in one message; then the header's columns filled,
    one side of the split per patient, ``source`` where no row names one. Rows keep their
    order.

    Args:
        no_split: what becomes of a row without a split (:class:`RowRules`), unless the
            user's ``rules`` say.
    """
    check = check or RowCheck(where)
    if not all(isinstance(i, str) for i in table.index):
        table = table.set_axis(line_index(len(table), None))
    table = check.table(table, rules or RowRules(), no_split)
    check.paths(table, fix)
    check.raise_any()
    table = table.reset_index(drop=True)
    if not len(table):
        raise LabelFileError(f"{where} lists no images with a usable label. {fix}")
    if header:
        table = from_header(table)
    if "source" not in table:
        table["source"] = source
    else:
        table["source"] = table["source"].fillna(source)
    check_patients(table, where)
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


def left_out(table: pd.DataFrame, keep: pd.Series, why: str, where: Path) -> pd.DataFrame:
    """The rows of ``keep`` (with their places in the file); how many others were left out,
    and why, goes to the log."""
    dropped = int((~keep).sum())
    if dropped:
        log.info("%s: %d of %d images left out (%s)", where, dropped, len(table), why)
    return table[keep]


def frontal_only(table: pd.DataFrame, views: Sequence[str] | None, where: Path) -> pd.DataFrame:
    """Only the rows whose ``view`` is in ``views`` (None: every view; ``FRONTAL`` by default
    in the collections); rows without a view are kept and counted."""
    if isinstance(views, str):  # data.table.views=PA would be the letters P and A
        views = [views]
    if views is None or "view" not in table:
        return table
    wanted = {v.upper() for v in views}
    known = table["view"].notna() & table["view"].astype(str).str.strip().ne("")
    unknown = int((~known).sum())
    if unknown:  # kept: an unreadable file is then reported as a bad image, not dropped here
        log.warning("%s: %d images have no view position; kept", where, unknown)
    keep = ~known | table["view"].astype(str).str.strip().str.upper().isin(wanted)
    return left_out(table, keep, f"view not in data.table.views={list(views)}", where)
