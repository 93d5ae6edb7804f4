"""The questions a run asks of its splits (files, labels, patients, counts, class weights,
the summary table), answered from the listings the DataModule set up.

A hooks class in the way Lightning composes its LightningModule (``ModelHooks``,
``DataHooks``): :class:`~pneumonia.data.datamodule.ChestXRayDataModule` derives from it and
holds what it reads: ``_splits`` (split name -> :class:`SplitListing`), ``classes``,
``root``, ``skipped`` and ``_split`` (one split, or the error saying how to set it up).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from pneumonia.data.index import summary_table
from pneumonia.data.table import SplitListing


class SplitQueries:
    """Reads of the splits a run uses: ``train``, ``val`` (after ``setup("fit")``), ``test``
    and ``holdout`` (with ``holdout_root``)."""

    _splits: dict[str, SplitListing]
    classes: list[str]
    root: Path
    skipped: dict[str, str]

    def _split(self, split: str) -> SplitListing:
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def listing(self, split: str) -> SplitListing:
        """The rows of ``split``, whole: files, labels, attributes."""
        return self._split(split)

    def files(self, split: str) -> list[Path]:
        """Image paths of ``split``."""
        return list(self._split(split).files)

    def labels(self, split: str) -> list[int]:
        return list(self._split(split).labels)

    def patients(self, split: str) -> set[str]:
        return self._split(split).patients()

    def frame(self, split: str) -> pd.DataFrame:
        """The table of ``split``: ``path``, ``label``, ``patient_id``, ``split`` and every
        attribute the data carries (``pneumonia.data.table``)."""
        return self._split(split).frame(self.classes, split)

    def split_counts(self, split: str) -> list[int]:
        """Images per class, in class-index order."""
        return self._split(split).counts(self.num_classes)

    @property
    def class_weights(self) -> torch.Tensor:
        """n / (k * n_c) from the training split, in class-index order."""
        counts = torch.tensor(self.split_counts("train"), dtype=torch.float64)
        return (counts.sum() / (len(counts) * counts)).float()

    def summary(self) -> str:
        """A table of images per split and class, patients per split, skipped files."""
        rows = {
            split: (self.split_counts(split), len(self.patients(split)))
            for split in ("train", "val", "test", "holdout")
            if split in self._splits
        }
        return summary_table(self.root, self.classes, rows, len(self.skipped))
