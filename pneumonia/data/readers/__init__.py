"""Readers that turn a collection's label files into the table of images
(:mod:`pneumonia.data.table`), and that table into the splits of a :class:`DataIndex`.

``data.table`` chooses one: ``{reader: manifest | rsna | nih | chexpert | mimic, ...its
options}``; without it (``null``) the data is the Kaggle folder layout, as ever.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from pneumonia.data.index import DataIndex, DataLayoutError
from pneumonia.data.readers import chexpert, manifest, public
from pneumonia.data.readers.common import CLASSES
from pneumonia.data.readers.rows import LabelFileError, RowRules
from pneumonia.data.table import SplitListing
from pneumonia.errors import InputValueError

log = logging.getLogger(__name__)

FOLDERS = "folders"  # data.table.reader=folders: the folder layout, as data.table=null
READERS: dict[str, Callable[..., pd.DataFrame]] = {
    "manifest": manifest.read,
    "rsna": public.read_rsna,
    "nih": public.read_nih,
    "chexpert": chexpert.read_chexpert,
    "mimic": chexpert.read_mimic,
}


def table_classes(spec: Mapping[str, Any], chosen: Sequence[str] | None = None) -> list[str]:
    """The two class names of a reader's table, sorted as the folder layout sorts them.

    Args:
        chosen: ``data.classes``: the two to use where a label file names more.

    Raises:
        InputValueError: other than two classes and no choice, or a choice not among them.
    """
    names = _all_classes(spec)
    if chosen is not None:
        if len(set(chosen)) != 2 or not set(chosen) <= set(names):
            raise InputValueError(
                f"data.classes={list(chosen)} must name two of the table's classes {names}."
            )
        return sorted(chosen)
    if len(names) != 2:
        raise InputValueError(
            f"data.table.labels names the classes {names}, but the model is binary: choose two "
            "with data.classes=[NORMAL,PNEUMONIA] (the other rows are left out, and counted in "
            "the log), or map several values onto one class."
        )
    return names


def _all_classes(spec: Mapping[str, Any]) -> list[str]:
    if spec.get("reader") == "manifest":
        return sorted((spec.get("labels") or manifest.DEFAULT_LABELS).keys())
    return list(CLASSES)


def read_table(root: Path, spec: Mapping[str, Any]) -> pd.DataFrame:
    """The table of images ``spec`` describes under ``root``.

    Raises:
        InputValueError: an unknown reader or option; LabelFileError: what the reader refuses.
    """
    options = {k: v for k, v in spec.items() if k != "reader"}
    rules = RowRules.take(options)  # before any file is read: a wrong policy costs nothing
    name = spec.get("reader")
    if name not in READERS:
        raise InputValueError(
            f"data.table.reader={name!r}; valid: {', '.join(READERS)} (or data.table=null for "
            "the folder layout)"
        )
    if not root.is_dir():
        raise DataLayoutError(f"Data root {root} does not exist (data.root, for data.table={name})")
    try:
        return READERS[name](root, **options, rules=rules)
    except TypeError as e:
        if "unexpected keyword" not in str(e):
            raise
        raise InputValueError(f"data.table: {e} (reader {name})") from e


def index_from_table(root: Path, table: pd.DataFrame, classes: Sequence[str]) -> DataIndex:
    """The splits of a table: rows whose ``split`` says so go there, rows without one into
    the training pool (``train``), from which validation is carved as for the folder layout.

    Raises:
        LabelFileError: no row to train on.
    """
    table = table.reset_index(drop=True)
    split = table["split"] if "split" in table else pd.Series([None] * len(table))
    split = split.where(split.notna(), "train")
    splits = {
        name: SplitListing.from_frame(table[split == name], classes)
        for name in ("train", "val", "test")
        if (split == name).any()
    }
    if "train" not in splits:
        raise LabelFileError(
            f"The table of {root} has no training rows (its split column gives only "
            f"{sorted(set(split))}). To train, give rows split=train or no split; to score "
            "a checkpoint on it, use pneumonia-evaluate."
        )
    return DataIndex(root, list(classes), splits)


def read_index(
    root: Path, spec: Mapping[str, Any], chosen: Sequence[str] | None = None
) -> DataIndex:
    """``read_table`` and ``index_from_table`` in one, for training; with ``chosen``
    (``data.classes``), only the rows of those two classes."""
    classes = table_classes(spec, chosen)
    table = read_table(root, spec)
    keep = table["label"].isin(classes)
    if not keep.all():
        log.warning(
            "Leaving out %d rows of the classes %s (data.classes=%s)",
            int((~keep).sum()),
            sorted(set(table["label"][~keep])),
            classes,
        )
        table = table[keep]
    return index_from_table(root, table, classes)


def evaluation_listing(root: Path, spec: Mapping[str, Any], classes: Sequence[str]) -> SplitListing:
    """The rows to score a checkpoint on: the table's ``test`` rows where it has a split
    column with test rows, else every row (a collection used whole as an external test).
    Class names map onto the checkpoint's ``classes`` (case aside).

    Raises:
        DataLayoutError: the table's classes and the checkpoint's do not match.
    """
    table = read_table(root, spec)
    if "split" in table and table["split"].eq("test").any():
        log.info("Scoring the %d test rows of the table", int(table["split"].eq("test").sum()))
        table = table[table["split"].eq("test")]
    ours = {c.lower(): c for c in classes}
    theirs = _all_classes(spec)
    if not set(ours) <= {c.lower() for c in theirs}:
        raise DataLayoutError(
            f"The table's classes {theirs} are not the checkpoint's {list(classes)}: map them "
            "with data.table.labels (manifest) or evaluate a checkpoint of these classes."
        )
    keep = table["label"].str.lower().isin(set(ours))
    if not keep.all():
        log.warning("Leaving out %d rows of other classes than the checkpoint's %s",
                    int((~keep).sum()), list(classes))  # fmt: skip
    table = table[keep].assign(label=[ours[str(v).lower()] for v in table["label"][keep]])
    return SplitListing.from_frame(table, list(classes))


__all__ = [
    "FOLDERS",
    "READERS",
    "LabelFileError",
    "evaluation_listing",
    "index_from_table",
    "read_index",
    "read_table",
    "table_classes",
]
