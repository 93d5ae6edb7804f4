"""The data layer's one shape: a table of images, one row per image.

Every reader produces it: the Kaggle folder layout, a labelled folder, a label file
(``data=manifest``) and the public collections (``pneumonia/data/readers/``). Its columns:

- ``path`` and ``label`` (the class name);
- ``patient_id``, and ``study_id`` where the data has one;
- ``split`` (``train``, ``val``, ``test``), where the data says it;
- ``source``: which dataset or site;
- any further attributes (``sex``, ``age``, ``view``, ``site`` ...).

Within the data layer a split is a :class:`SplitListing`: the files and label indices every
loader needs, with the other columns alongside (``attributes``), so that splitting, the
bad-image policy and the leak check keep each row whole. No Lightning here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from pneumonia.data.patients import patient_id

SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val",
               "validate": "val", "validation": "val", "test": "test",
               "testing": "test"}  # fmt: skip


@dataclass
class SplitListing:
    """The images of one split: files, label indices, and the rest of each row.

    Args:
        attributes: one row per file, in the same order: ``patient_id``, ``study_id``,
            ``source`` and any further attribute; None where the data has none (the folder
            layout, whose patient ids come from Kermany's file names).
    """

    files: list[Path]
    labels: list[int]
    ignored: list[Path] = field(default_factory=list)  # non-image files such as .DS_Store
    attributes: pd.DataFrame | None = None

    def __post_init__(self) -> None:
        if len(self.files) != len(self.labels):
            raise ValueError(f"{len(self.files)} files but {len(self.labels)} labels")
        if self.attributes is not None:
            if len(self.attributes) != len(self.files):
                raise ValueError(
                    f"{len(self.files)} files but {len(self.attributes)} rows of attributes"
                )
            self.attributes = self.attributes.reset_index(drop=True)

    def counts(self, num_classes: int) -> list[int]:
        """Images per class, in class-index order."""
        return [self.labels.count(label) for label in range(num_classes)]

    @property
    def patient_ids(self) -> list[str]:
        """Each image's patient: the table's ``patient_id`` where it gives one; in the folder
        layout, the id in a Kermany file name (a name without one is its own patient)."""
        given = (
            self.attributes["patient_id"].tolist()
            if self.attributes is not None and "patient_id" in self.attributes
            else [None] * len(self.files)
        )
        # A table row without an id is its own patient, by its whole path (files of a hospital
        # export are often all named image.dcm); the folder layout keeps Kermany's names.
        fallback = patient_id if self.attributes is None else (lambda f: f"file:{f}")
        return [
            str(p) if p is not None and not pd.isna(p) and str(p) != "" else fallback(f)
            for f, p in zip(self.files, given, strict=True)
        ]

    def patients(self) -> set[str]:
        return set(self.patient_ids)

    def take(self, indices: Sequence[int]) -> SplitListing:
        """The rows at ``indices``, in that order, whole."""
        indices = list(indices)
        return SplitListing(
            files=[self.files[i] for i in indices],
            labels=[self.labels[i] for i in indices],
            ignored=self.ignored,
            attributes=None if self.attributes is None else self.attributes.iloc[indices],
        )

    def without_patients(self, patients: set[str]) -> SplitListing:
        """This split less every image of ``patients``."""
        return self.take([i for i, p in enumerate(self.patient_ids) if p not in patients])

    def __add__(self, other: SplitListing) -> SplitListing:
        """Both splits' rows, this one's first (pooling ``train/`` and ``val/``)."""
        attributes = None
        if self.attributes is not None or other.attributes is not None:
            attributes = pd.concat(
                [_frame_or_empty(s) for s in (self, other)], ignore_index=True, sort=False
            )
        return SplitListing(
            self.files + other.files,
            self.labels + other.labels,
            self.ignored + other.ignored,
            attributes,
        )

    def frame(self, classes: Sequence[str], split: str | None = None) -> pd.DataFrame:
        """The table of this split: ``path``, ``label`` (the class name), ``patient_id``,
        (``split``), then the attributes it carries."""
        table = pd.DataFrame(
            {
                "path": [str(f) for f in self.files],
                "label": [classes[i] for i in self.labels],
                "patient_id": self.patient_ids,
            }
        )
        if split is not None:
            table["split"] = split
        if self.attributes is not None:
            extra = self.attributes.drop(columns=["patient_id"], errors="ignore")
            table = pd.concat([table, extra], axis=1)
        return table

    def attribute_rows(self) -> list[dict[str, object]] | None:
        """One dict per image of the attributes beyond the path and label, for
        ``predictions.csv`` (missing values None); None where there are none."""
        if self.attributes is None:
            return None
        rows = self.attributes.astype(object).where(self.attributes.notna(), None)
        return rows.to_dict("records")

    @classmethod
    def from_frame(cls, table: pd.DataFrame, classes: Sequence[str]) -> SplitListing:
        """A split from table rows (``path``, ``label`` as a class name, anything else)."""
        index = {name: i for i, name in enumerate(classes)}
        rest = table.drop(columns=["path", "label", "split"], errors="ignore")
        return cls(
            files=[Path(p) for p in table["path"]],
            labels=[index[name] for name in table["label"]],
            attributes=rest if len(rest.columns) else None,
        )


def _frame_or_empty(listing: SplitListing) -> pd.DataFrame:
    if listing.attributes is not None:
        return listing.attributes
    return pd.DataFrame(index=range(len(listing.files)))


def split_name(value: object) -> str | None:
    """A split column's value as ``train``/``val``/``test`` (None for a blank); other values
    are returned as given, for the reader to refuse."""
    if value is None or (not isinstance(value, str) and pd.isna(value)) or str(value) == "":
        return None
    return SPLIT_NAMES.get(str(value).strip().lower(), str(value))
