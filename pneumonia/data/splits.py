"""Patient-grouped, stratified validation splits, and the splits a training run fits on.

Several images of one patient on both sides of a split inflate validation scores, so the split
is made over patients. The patient order is a hash of ``(seed, patient id)``: it needs no RNG
whose stream could change between NumPy versions, so the same seed gives the same split on
every machine and for any listing order of the files.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pneumonia.data.leakage import LeakPolicy, check_leaks
from pneumonia.data.patients import patient_id
from pneumonia.data.table import SplitListing
from pneumonia.errors import InputValueError

OFFICIAL_VAL_MIN = 100


def _rank(seed: int, group: str) -> str:
    # surrogateescape: an id from a file name that is not UTF-8 hashes by its original bytes.
    return hashlib.sha256(f"{seed}:{group}".encode("utf-8", "surrogateescape")).hexdigest()


def patient_split(
    files: Sequence[Path],
    labels: Sequence[int],
    *,
    fraction: float,
    seed: int,
    patients: Sequence[str] | None = None,
) -> tuple[list[int], list[int]]:
    """Split indices into (train, val) so that no patient is on both sides.

    ``patients`` gives each file's patient (a table's ``patient_id``); by default the ids in
    Kermany file names.

    Stratified: per class, patients (assigned to their majority class) are taken in hashed order
    until the class's validation image count reaches ``round(fraction * n_class)``.

    Returns:
        Sorted index lists into ``files``.
    """
    if not 0.0 < fraction < 1.0:
        raise InputValueError(
            f"data.val_fraction must be between 0 and 1 (exclusive), got {fraction}"
        )
    if len(files) != len(labels):
        raise ValueError("files and labels differ in length")
    if patients is None:
        patients = [patient_id(f) for f in files]
    members: dict[str, list[int]] = defaultdict(list)
    for i, group in enumerate(patients):
        members[group].append(i)
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


def patient_folds(
    labels: Sequence[int], patients: Sequence[str], *, folds: int, seed: int
) -> list[int]:
    """Each image's fold, 0..``folds``-1: disjoint by patient, every patient in exactly one,
    stratified (per class, patients assigned to their majority class are dealt out in hashed
    order to the fold with the fewest images of that class so far).

    Raises:
        InputValueError: fewer than 2 folds, or fewer patients than folds.
    """
    members: dict[str, list[int]] = defaultdict(list)
    for i, group in enumerate(patients):
        members[group].append(i)
    if folds < 2 or folds > len(members):
        raise InputValueError(
            f"data.folds={folds}: k-fold needs at least 2 folds and at most one per patient "
            f"({len(members)} patients here)."
        )
    by_class: dict[int, list[str]] = defaultdict(list)
    for group, idx in members.items():
        majority = Counter(labels[i] for i in idx).most_common(1)[0][0]
        by_class[majority].append(group)
    fold_of = [0] * len(labels)
    for cls in sorted(by_class):
        sizes = [0] * folds
        for group in sorted(by_class[cls], key=lambda g: _rank(seed, g)):
            target = min(range(folds), key=lambda f: (sizes[f], f))
            for i in members[group]:
                fold_of[i] = target
            sizes[target] += len(members[group])
    return fold_of


def fit_splits(
    train: SplitListing,
    val: SplitListing | None,
    *,
    val_split: Literal["patient", "official"],
    fraction: float,
    seed: int,
    warn: Callable[[str], None],
    folds: int | None = None,
    fold: int = 0,
) -> dict[str, SplitListing]:
    """The training and validation splits from the ``train/`` (and ``val/``) folders.

    ``patient`` pools both folders and carves a patient-grouped ``fraction``; ``official``
    keeps ``val/`` as it is (warning when it is too small to select a model on). With
    ``folds``, both folders are pooled and fold ``fold`` of a patient-grouped, stratified
    k-fold (:func:`patient_folds`) is the validation split.
    """
    if folds is not None:
        if not 0 <= fold < folds:
            raise InputValueError(
                f"data.fold={fold}: must be 0 to {folds - 1} (data.folds={folds})"
            )
        pool = train + val if val is not None else train
        of = patient_folds(pool.labels, pool.patient_ids, folds=folds, seed=seed)
        return {
            "train": pool.take([i for i, f in enumerate(of) if f != fold]),
            "val": pool.take([i for i, f in enumerate(of) if f == fold]),
        }
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
    pool = train + val if val is not None else train
    train_idx, val_idx = patient_split(
        pool.files, pool.labels, fraction=fraction, seed=seed, patients=pool.patient_ids
    )
    return {"train": pool.take(train_idx), "val": pool.take(val_idx)}


def training_splits(
    listings: Mapping[str, SplitListing],
    holdout: SplitListing | None,
    classes: Sequence[str],
    *,
    val_split: Literal["patient", "official"],
    fraction: float,
    seed: int,
    on_leak: LeakPolicy,
    warn: Callable[[str], None],
    info: Callable[[str], None],
    hashes: Mapping[str, str] | None = None,
    folds: int | None = None,
    fold: int = 0,
) -> tuple[dict[str, SplitListing], list[dict[str, Any]]]:
    """The splits a training run fits on, from the data root's listings and a holdout folder.

    Every patient of the holdout folder leaves the pool first; then :func:`fit_splits` makes
    train and val, and ``check_leaks`` looks for images and patients shared with val, test or
    the holdout (applying ``on_leak``), with the content ``hashes`` already known.

    Returns:
        ``train``, ``val`` (and ``holdout``), and the leak check's records.

    Raises:
        ValueError: a class with no training image left.
    """
    held = holdout.patients() if holdout is not None else set()
    pool = {name: listings.get(name) for name in ("train", "val")}
    if held:
        kept = {k: v.without_patients(held) if v else v for k, v in pool.items()}
        removed = sum(len(v.files) - len(kept[k].files) for k, v in pool.items() if v)
        if removed:
            info(
                f"Holdout: {removed} images of its {len(held)} patients left out of training "
                "and validation"
            )
        pool = kept
    splits = fit_splits(
        pool["train"],
        pool["val"],
        val_split=val_split,
        fraction=fraction,
        seed=seed,
        warn=warn,
        folds=folds,
        fold=fold,
    )
    if holdout is not None:
        splits["holdout"] = holdout
    test = listings.get("test")
    splits, leakage = check_leaks(splits, test, on_leak, warn, hashes)
    for name, n in zip(classes, splits["train"].counts(len(classes)), strict=True):
        if n == 0:
            raise InputValueError(f"The training split has no {name} images after the split.")
    return splits, leakage
