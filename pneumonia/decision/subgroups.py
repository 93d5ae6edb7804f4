"""Does the model do worse on some images? Metrics per subgroup, with intervals.

- Kermany's file names say which pneumonia is bacterial and which viral
  (``personN_bacteria_M.jpeg``, ``personN_virus_M.jpeg``): recall per kind.
- A table's attribute columns split the images by sex, age band and view (the per-source
  metrics are :func:`pneumonia.decision.report.by_source`).

A subgroup smaller than ``min_size`` images gets a warning instead of numbers: an interval over
a handful of images says nothing, and a number without one misleads.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from pneumonia.decision.metrics import metrics_with_intervals
from pneumonia.decision.predictions import Predictions

MIN_SUBGROUP = 30  # images; fewer: a warning instead of numbers
AGE_BANDS = ((0, 18, "0-17"), (18, 40, "18-39"), (40, 65, "40-64"), (65, math.inf, "65+"))
ATTRIBUTES = ("sex", "age", "view")  # a table's columns that split the images


def pathogen(path: str | Path) -> str | None:
    """``bacterial`` or ``viral`` from a Kermany file name, else None."""
    name = Path(path).name.lower()
    if "bacteria" in name:
        return "bacterial"
    if "virus" in name:
        return "viral"
    return None


def age_band(age: Any) -> str | None:
    try:
        years = float(age)
    except (TypeError, ValueError):
        return None
    if math.isnan(years):
        return None
    return next(label for low, high, label in AGE_BANDS if low <= years < high)


def _labels(preds: Predictions) -> dict[str, list[str | None]]:
    """Each grouping's label per image (None: the image is in no group of it)."""
    groupings: dict[str, list[str | None]] = {}
    kinds = [pathogen(f) if int(t) == 1 else None for f, t in zip(preds.files, preds.targets,
                                                                   strict=False)]  # fmt: skip
    if any(kinds):
        groupings["pathogen"] = kinds
    rows = preds.attributes or []
    for column in ATTRIBUTES:
        values = [(row or {}).get(column) for row in rows]
        if column == "age":
            labels = [age_band(v) for v in values]
            column = "age_band"
        else:
            labels = [None if v is None or v != v or str(v).strip() == "" else str(v).strip()
                      for v in values]  # fmt: skip
        if len({x for x in labels if x is not None}) >= 2:
            groupings[column] = labels
    return groupings


def subgroup_report(
    preds: Predictions, *, min_size: int = MIN_SUBGROUP, **bootstrap: Any
) -> dict[str, dict[str, Any]] | None:
    """Per grouping (``pathogen``, ``sex``, ``age_band``, ``view``) and group: its images,
    PNEUMONIA count and metrics with intervals (those the group defines: a group of PNEUMONIA
    images only has a recall and no specificity), or a warning where it has fewer than
    ``min_size`` images. None where the images carry no grouping."""
    groupings = _labels(preds)
    if not groupings:
        return None
    report: dict[str, dict[str, Any]] = {}
    for grouping, labels in groupings.items():
        groups = {}
        for name in sorted({x for x in labels if x is not None}):
            group = preds.subset(torch.tensor([x == name for x in labels]))
            n = len(group.probs)
            entry: dict[str, Any] = {"num_images": n, "num_pneumonia": int(group.targets.sum())}
            if n < min_size:
                entry["warning"] = (
                    f"only {n} images, fewer than {min_size}: too few for a number that means "
                    "anything (subgroups.min_size)"
                )
            else:
                both = 0 < entry["num_pneumonia"] < n
                entry["metrics"] = metrics_with_intervals(group.probs.float(), group.targets.long(),
                                            group.threshold, ranking=both, **bootstrap)  # fmt: skip
            groups[name] = entry
        report[grouping] = groups
    return report
