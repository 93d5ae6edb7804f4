"""Every label row checked before any work: the one place the readers' tables go through.

A reader records what it finds wrong in its file's cells as it reads (an empty cell in a
column it needs, a value outside its vocabulary) in a :class:`RowCheck`; :func:`finish
<pneumonia.data.readers.common.finish>` adds what only the whole table shows (a path listed
with two labels or in two splits, a row repeated, a row without a split, a path that does not
exist) and raises them all in one :class:`LabelFileError`: each problem counted, a few rows
named by their line in the file, and the way out. A table is never half-checked: a training
run that would meet the second problem an hour after fixing the first is what this avoids.

What users legitimately vary is a policy (:class:`RowRules`, ``data.table.*``); a row with two
labels or two splits is never a policy question and is always refused.
"""

from __future__ import annotations

import codecs
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pandas as pd

from pneumonia.data.index import DataLayoutError
from pneumonia.data.table import split_name
from pneumonia.errors import InputValueError

log = logging.getLogger(__name__)

EXAMPLES = 5
DUPLICATE_POLICIES = ("drop", "error")
NO_SPLIT_POLICIES = ("train", "drop", "error")
SEPARATORS = (",", ";", "\t", "|")
SPLIT_FIX = "Rename them, or drop the split column to let the project make a patient-grouped split."


class LabelFileError(DataLayoutError):
    """A label file that cannot be read as the table of images it should be."""


def check_policy(name: str, value: str, valid: Sequence[str]) -> None:
    """Raises InputValueError where ``data.table.<name>`` is not one of ``valid``."""
    if value not in valid:
        raise InputValueError(f"data.table.{name}={value!r}; valid: {', '.join(valid)}")


@dataclass(frozen=True)
class RowRules:
    """How a label file is read and its rows checked, the same for every reader.

    Args:
        duplicates: a row repeating an earlier one (same image, label and split): ``drop``
            (left out, counted in the log; what a repeated row would otherwise do is train
            or score that image twice) or ``error``.
        no_split: a row without a split where the file gives splits: ``train`` (the training
            pool), ``drop`` (left out, counted and named in the log) or ``error``; None: the
            reader's own default.
        encoding: the text encoding of a CSV (``utf-8``, a byte-order mark allowed).
        separator: the CSV's separator; None: detected from its header line.
    """

    duplicates: str = "drop"
    no_split: str | None = None
    encoding: str = "utf-8"
    separator: str | None = None

    def __post_init__(self) -> None:
        check_policy("duplicates", self.duplicates, DUPLICATE_POLICIES)
        if self.no_split is not None:
            check_policy("no_split", self.no_split, NO_SPLIT_POLICIES)
        try:
            codecs.lookup(str(self.encoding))
        except LookupError as e:
            raise InputValueError(
                f"data.table.encoding={self.encoding!r} is not a text encoding Python knows; "
                "e.g. utf-8, latin-1, cp1252"
            ) from e
        if self.separator is not None and (
            not isinstance(self.separator, str) or len(self.separator) != 1
        ):
            raise InputValueError(
                f"data.table.separator={self.separator!r}: one character (',', ';', '\\t', "
                "'|'), or null to detect it from the header line"
            )

    @classmethod
    def take(cls, options: dict[str, Any]) -> RowRules:
        """The rules among a reader's options, taken out of ``options``."""
        return cls(**{f.name: options.pop(f.name) for f in fields(cls) if f.name in options})


def examples(values: Sequence[Any]) -> str:
    shown = ", ".join(str(v) for v in values[:EXAMPLES])
    return shown + (f", ... ({len(values)} in all)" if len(values) > EXAMPLES else "")


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


def blank(values: pd.Series) -> pd.Series:
    """Cells with nothing in them (missing, or only spaces)."""
    return values.isna() | values.astype(str).str.strip().eq("")


def _places(table: pd.DataFrame, rows: pd.Series, shown: Iterable[Any]) -> list[str]:
    """``line N: value`` for each row of ``rows`` (a mask): the index is where it came from."""
    return [f"{where}: {value}" for where, value in zip(table.index[rows], shown, strict=True)]


class RowCheck:
    """The problems of one label file's rows, gathered to be raised in one message."""

    def __init__(self, where: Path):
        self.where = where
        self.problems: list[str] = []

    def add(self, count: int, what: str, places: Sequence[str], fix: str) -> None:
        shown = ", ".join(str(p) for p in places[:EXAMPLES])
        more = f", ... ({count} in all)" if count > min(len(places), EXAMPLES) else ""
        self.problems.append(f"{count} {what}: {shown}{more}. {fix}")

    def cells(
        self,
        table: pd.DataFrame,
        column: str,
        *,
        known: Iterable[str] | None = None,
        required: bool = True,
        fix: str = "",
    ) -> pd.Series:
        """Rows whose ``column`` is filled (where ``required``) and, with ``known``, holds one
        of those values (as :func:`normal_text`); the others are recorded."""
        empty = blank(table[column])
        if required and empty.any():
            self.add(int(empty.sum()), f"row(s) with an empty {column!r} cell",
                     list(table.index[empty]), "Fill them in, or remove those rows.")  # fmt: skip
        good = ~empty if required else pd.Series(True, index=table.index)
        if known is not None:
            allowed = set(known)
            text = pd.Series([normal_text(v) for v in table[column]], index=table.index)
            outside = ~empty & ~text.isin(allowed)
            if outside.any():
                self.add(int(outside.sum()),
                         f"row(s) with a {column!r} outside {sorted(allowed)}",
                         _places(table, outside, (repr(v) for v in table[column][outside])),
                         fix)  # fmt: skip
            good &= ~outside
        return good

    def agree(self, table: pd.DataFrame, key: Sequence[str], column: str, what: str,
              fix: str) -> pd.Series:  # fmt: skip
        """Rows whose ``key`` has one ``column`` value in all its rows; the keys with two
        (``what``: "path(s) listed with two labels") are recorded, all their rows out."""
        keys = _joined(table, key)
        values = table[column].astype(object).where(table[column].notna(), "(none)")
        seen = pd.DataFrame({"k": keys, "v": values.astype(str)}, index=table.index)
        clash = seen.groupby("k", sort=False)["v"].transform("nunique").gt(1)
        if clash.any():
            named = [
                f"{k} ({'; '.join(f'{w}: {v}' for w, v in rows['v'].items())})"
                for k, rows in list(seen[clash].groupby("k", sort=False))[:EXAMPLES]
            ]
            count = seen.loc[clash, "k"].nunique()
            self.add(count, what, named, fix)
        return ~clash

    def once(self, table: pd.DataFrame, key: Sequence[str], policy: str, what: str) -> pd.Series:
        """Each ``key``'s first row; the repeats are left out with a count in the log
        (``policy`` drop) or recorded (error). ``what`` names what they repeat ("path, label
        and split"): rows that differ there are :meth:`agree`'s."""
        keys = _joined(table, key)
        again = keys.duplicated()
        if not again.any():
            return ~again
        first = dict(zip(keys[~again], table.index[~again], strict=True))
        named = [f"{w} (as {first[k]}): {k}" for w, k in keys[again].items()]
        why = f"repeating an earlier row (the same {what})"
        if policy == "error":
            fix = "Remove them, or set data.table.duplicates=drop to leave them out."
            self.add(int(again.sum()), f"row(s) {why}", named, fix)
            return ~again
        log.warning("%s: %d row(s) %s, left out (data.table.duplicates=drop): %s", self.where,
                    int(again.sum()), why, examples(named))  # fmt: skip
        return ~again

    def table(self, table: pd.DataFrame, rules: RowRules, no_split: str) -> pd.DataFrame:
        """The whole table's checks, on ``path`` and ``label`` (and ``split``): empty paths,
        unknown split values, a path with two labels or in two splits, repeated rows, rows
        without a split (``rules.no_split``, else ``no_split``). Returns the rows to keep."""
        table = table[self.cells(table, "path")].copy()
        table = table[self.cells(table, "label")]
        key = pd.Series([os.path.normpath(str(p)) for p in table["path"]], index=table.index)
        table = table.assign(_key=key)
        if "split" in table:
            table["split"] = pd.Series([split_name(v) for v in table["split"]],
                                       index=table.index, dtype=object)  # fmt: skip
            given = table["split"].notna()
            unknown = given & ~table["split"].isin(("train", "val", "test"))
            if unknown.any():
                self.add(int(unknown.sum()), "row(s) with a split other than train, val "
                         "(valid, validation) and test",
                         _places(table, unknown, table["split"][unknown]), SPLIT_FIX)  # fmt: skip
            table = table[~unknown]
        keep = self.agree(table, ["_key"], "label", "path(s) listed with two labels",
                          "An image has one label: remove the wrong rows.")  # fmt: skip
        if "split" in table:
            keep &= self.agree(
                table, ["_key"], "split", "path(s) listed in two splits (or with and without "
                "one)", "Figures on one split would count an image seen in another: keep one "
                "row per image.",
            )  # fmt: skip
        table = table[keep]
        table = table[self.once(table, ["_key"], rules.duplicates, "path, label and split")]
        if "split" in table:
            table = self._no_split(table, rules.no_split or no_split)
        return table.drop(columns="_key")

    def _no_split(self, table: pd.DataFrame, policy: str) -> pd.DataFrame:
        none = table["split"].isna()
        if not none.any():
            return table
        named = _places(table, none, table["path"][none])
        if policy == "error":
            self.add(int(none.sum()), "row(s) without a split", named,
                     "Give them one, or set data.table.no_split=train (the training pool) or "
                     "drop (leave them out).")  # fmt: skip
            return table
        say = log.warning if policy == "drop" else log.info
        fate = "left out" if policy == "drop" else "in the training pool"
        say("%s: %d of %d images have no split, %s (data.table.no_split=%s): %s", self.where,
            int(none.sum()), len(table), fate, policy, examples(named))  # fmt: skip
        return table[~none] if policy == "drop" else table

    def paths(self, table: pd.DataFrame, fix: str) -> None:
        """Every ``path`` is there. A link whose target is gone is there: it is a bad image,
        under ``data.on_bad_image``, like a file that cannot be decoded."""
        missing = pd.Series([not os.path.lexists(p) for p in table["path"]], index=table.index,
                            dtype=bool)  # fmt: skip
        if missing.any():
            what = f"of the {len(table)} images that {self.where} lists do not exist"
            self.add(int(missing.sum()), what, _places(table, missing, table["path"][missing]), fix)

    def raise_any(self) -> None:
        """Raises LabelFileError naming every problem recorded, one per line."""
        if self.problems:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            note = "\nLines are the file's own (its header is line 1)." if "line " in lines else ""
            raise LabelFileError(
                f"{self.where} has rows that cannot be used; nothing was trained or scored:\n"
                f"{lines}{note}"
            )


def _joined(table: pd.DataFrame, key: Sequence[str]) -> pd.Series:
    text = table[key[0]].astype(str)
    for column in key[1:]:
        text = text + "/" + table[column].astype(str)
    return text


def line_index(rows: int, lines: int | None) -> list[str]:
    """Where each row came from: ``line N`` where the file's lines and rows match one to one
    (a header, then a row a line), else ``row N`` (quoted line breaks, blank lines)."""
    if lines == rows + 1:
        return [f"line {i + 2}" for i in range(rows)]
    return [f"row {i + 1}" for i in range(rows)]


def from_file(table: pd.DataFrame, name: str) -> pd.DataFrame:
    """``table`` with its rows' places prefixed by the file's name (several files in one)."""
    return table.set_axis([f"{name} {w}" for w in table.index])


__all__ = [
    "LabelFileError", "RowCheck", "RowRules", "check_policy", "examples", "normal_text",
]  # fmt: skip
