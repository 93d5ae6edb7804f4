"""Patient-grouped, stratified validation splits for Kermany file names.

Several images of one patient on both sides of a split inflate validation scores, so the split
is made over patients. The patient order is a hash of ``(seed, patient id)``: it needs no RNG
whose stream could change between NumPy versions, so the same seed gives the same split on
every machine and for any listing order of the files.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from pneumonia.data.index import SplitListing

OFFICIAL_VAL_MIN = 100

# personN_bacteria_M.jpeg / personN_virus_M.jpeg (also personN_virus_M_K.jpeg) -> personN
_PERSON = re.compile(r"^(person\d+)_", re.IGNORECASE)
# IM-NNNN-MMMM.jpeg, IM-NNNN-MMMM-KKKK.jpeg, NORMAL2-IM-NNNN-MMMM.jpeg -> IM-NNNN / NORMAL2-IM-NNNN
_IM = re.compile(r"^((?:NORMAL2-)?IM-\d+)-\d+", re.IGNORECASE)


def patient_id(path: str | Path) -> str:
    """Patient id parsed from a Kermany file name; a name with no id is its own group."""
    stem = Path(path).stem
    for pattern in (_PERSON, _IM):
        m = pattern.match(stem)
        if m:
            return m.group(1)
    return f"file:{Path(path).name}"


def _rank(seed: int, group: str) -> str:
    # surrogateescape: an id from a file name that is not UTF-8 hashes by its original bytes.
    return hashlib.sha256(f"{seed}:{group}".encode("utf-8", "surrogateescape")).hexdigest()


def patient_split(
    files: Sequence[Path], labels: Sequence[int], *, fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Split indices into (train, val) so that no patient is on both sides.

    Stratified: per class, patients (assigned to their majority class) are taken in hashed order
    until the class's validation image count reaches ``round(fraction * n_class)``.

    Returns:
        Sorted index lists into ``files``.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"data.val_fraction must be between 0 and 1 (exclusive), got {fraction}")
    if len(files) != len(labels):
        raise ValueError("files and labels differ in length")
    members: dict[str, list[int]] = defaultdict(list)
    for i, f in enumerate(files):
        members[patient_id(f)].append(i)
    by_class: dict[int, list[str]] = defaultdict(list)
    for group, idx in members.items():
        majority = Counter(labels[i] for i in idx).most_common(1)[0][0]
        by_class[majority].append(group)

    val: list[int] = []
    class_counts = Counter(labels)
    for cls in sorted(by_class):
        target = round(fraction * class_counts[cls])
        taken = 0
        for group in sorted(by_class[cls], key=lambda g: _rank(seed, g)):
            if taken >= target:
                break
            val.extend(members[group])
            taken += sum(1 for i in members[group] if labels[i] == cls)
    val_set = set(val)
    train = [i for i in range(len(files)) if i not in val_set]
    return train, sorted(val_set)


def without_patients(listing: SplitListing, patients: set[str]) -> SplitListing:
    """``listing`` less every image of ``patients`` (by the ids in the file names)."""
    keep = [i for i, f in enumerate(listing.files) if patient_id(f) not in patients]
    return SplitListing(
        files=[listing.files[i] for i in keep],
        labels=[listing.labels[i] for i in keep],
        ignored=listing.ignored,
    )


def fit_splits(
    train: SplitListing,
    val: SplitListing | None,
    *,
    val_split: Literal["patient", "official"],
    fraction: float,
    seed: int,
    warn: Callable[[str], None],
) -> dict[str, SplitListing]:
    """The training and validation splits from the ``train/`` (and ``val/``) folders.

    ``patient`` pools both folders and carves a patient-grouped ``fraction``; ``official``
    keeps ``val/`` as it is (warning when it is too small to select a model on).
    """
    if val_split == "official" and val is not None:
        if len(val.files) < OFFICIAL_VAL_MIN:
            warn(
                f"The official val split holds only {len(val.files)} images: too few for "
                "model selection or threshold tuning. data.val_split=patient carves a "
                "patient-grouped split instead."
            )
        return {"train": train, "val": val}
    if val_split == "official":
        warn(
            f"data.val_split=official but there is no val/ folder: carving a "
            f"patient-grouped {fraction:.0%} of train instead."
        )
    files, labels = list(train.files), list(train.labels)
    if val is not None:
        files += val.files
        labels += val.labels
    train_idx, val_idx = patient_split(files, labels, fraction=fraction, seed=seed)
    return {
        "train": SplitListing([files[i] for i in train_idx], [labels[i] for i in train_idx]),
        "val": SplitListing([files[i] for i in val_idx], [labels[i] for i in val_idx]),
    }
