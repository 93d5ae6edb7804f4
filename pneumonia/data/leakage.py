"""Leakage between splits: the same image, or the same patient, on both sides.

An image copied or linked into both ``train/`` and ``test/`` is scored on data the model
trained on; so is a patient whose other images trained it (the Kaggle release of the Kermany
set has many patient ids in both its train and test folders). Both inflate every figure
computed on the later split, silently. :func:`find_leaks` finds them: exact duplicates by
content hash, and patients by the ids in Kermany file names (files without an id are not
compared by patient).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pneumonia.data.cache_build import content_hash
from pneumonia.data.table import SplitListing
from pneumonia.errors import InputValueError
from pneumonia.system.pools import threads
from pneumonia.system.runtime import decode_threads

LeakPolicy = Literal["warn", "error", "drop"]
LEAK_POLICIES = ("warn", "error", "drop")
EXAMPLES = 5


class LeakageError(InputValueError):
    """Images or patients on both sides of a split, under ``data.on_leak=error``."""


@dataclass
class Leak:
    """What one pair of splits shares."""

    first: str
    second: str
    duplicates: list[tuple[Path, Path]] = field(default_factory=list)  # same bytes
    patients: dict[str, tuple[list[Path], list[Path]]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.duplicates or self.patients)

    def files_of_first(self) -> set[Path]:
        """Every file of the first split that the second shares, by content or by patient."""
        files = {a for a, _ in self.duplicates}
        for ours, _ in self.patients.values():
            files.update(ours)
        return files

    def describe(self) -> str:
        lines = [f"{self.first} / {self.second}:"]
        if self.duplicates:
            lines.append(f"  {len(self.duplicates)} identical image(s) in both, e.g.")
            lines += [f"    {a}  ==  {b}" for a, b in self.duplicates[:EXAMPLES]]
        if self.patients:
            lines.append(f"  {len(self.patients)} patient(s) in both, e.g.")
            for pid, (a, b) in list(self.patients.items())[:EXAMPLES]:
                lines.append(
                    f"    {pid}: {len(a)} image(s) in {self.first}, {len(b)} in {self.second}"
                )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "splits": [self.first, self.second],
            "identical_images": len(self.duplicates),
            "shared_patients": len(self.patients),
            "examples_identical": [[str(a), str(b)] for a, b in self.duplicates[:EXAMPLES]],
            "examples_patients": list(self.patients)[:EXAMPLES],
        }


def find_leaks(
    splits: Mapping[str, SplitListing | Sequence[Path]],
    pairs: Sequence[tuple[str, str]],
    hashes: Mapping[str, str] | None = None,
) -> list[Leak]:
    """The duplicates and shared patients of each ``(first, second)`` pair of ``splits``
    (listings, whose patient ids are their table's or their file names'; or plain files).

    Args:
        hashes: resolved path -> content hash, already known (the decoded-image cache's);
            the other files are read and hashed here.
    """
    splits = {
        name: s if isinstance(s, SplitListing) else SplitListing(list(s), [0] * len(s))
        for name, s in splits.items()
    }
    names = {n for pair in pairs for n in pair if n in splits}
    files = sorted({f for n in names for f in splits[n].files})
    hashes = file_hashes(files, hashes)
    leaks = []
    for first, second in pairs:
        if first not in splits or second not in splits:
            continue
        leak = Leak(first, second)
        by_hash = defaultdict(list)
        for f in splits[second].files:
            by_hash[hashes[f]].append(f)
        leak.duplicates = [
            (f, by_hash[hashes[f]][0]) for f in splits[first].files if hashes[f] in by_hash
        ]
        ours, theirs = _by_patient(splits[first]), _by_patient(splits[second])
        leak.patients = {
            pid: (ours[pid], theirs[pid])
            for pid in sorted(set(ours) & set(theirs))
            if not pid.startswith("file:")  # no id in the name: nothing to compare
        }
        leaks.append(leak)
    return leaks


def file_hashes(files: Sequence[Path], known: Mapping[str, str] | None = None) -> dict[Path, str]:
    """Each file's content hash: ``known``'s (resolved path -> hash, the decoded-image cache's)
    where it has one, else read here."""
    known = known or {}
    resolved = {f: str(f.resolve()) for f in files}
    missing = [f for f in files if resolved[f] not in known]
    with threads(decode_threads()) as pool:  # Ctrl-C drops the queued files
        read = dict(zip(missing, pool.map(content_hash, missing), strict=True))
    return {f: read[f] if f in read else known[resolved[f]] for f in files}


def _by_patient(listing: SplitListing) -> dict[str, list[Path]]:
    members = defaultdict(list)
    for f, pid in zip(listing.files, listing.patient_ids, strict=True):
        members[pid].append(f)
    return members


# Training and validation against everything scored after training.
PAIRS = (("train", "val"), ("train", "test"), ("val", "test"), ("train", "holdout"),
         ("val", "holdout"))  # fmt: skip


def check_leaks(
    splits: dict[str, SplitListing],
    test: SplitListing | None,
    policy: LeakPolicy,
    warn: Callable[[str], None],
    hashes: Mapping[str, str] | None = None,
) -> tuple[dict[str, SplitListing], list[dict[str, Any]]]:
    """Find the leaks of :data:`PAIRS` and apply ``data.on_leak`` to them.

    Returns:
        The splits (under ``drop``, ``train`` and ``val`` without the leaking images), and what
        was found, one record per pair of splits that share something.

    Raises:
        LeakageError: under ``error``, with counts and examples and the way out.
    """
    compared = dict(splits) | ({"test": test} if test is not None else {})
    leaks = [leak for leak in find_leaks(compared, PAIRS, hashes) if leak]
    report = [leak.to_dict() for leak in leaks]
    if not leaks:
        return splits, report
    found = "\n".join(leak.describe() for leak in leaks)
    if policy == "error":
        raise LeakageError(
            f"Images or patients on both sides of a split:\n{found}\nRemove them, or set "
            "data.on_leak=drop to leave them out of training and validation "
            "(data.on_leak=warn goes on regardless)."
        )
    message = f"Images or patients on both sides of a split (data.on_leak={policy}):"
    if policy == "drop":
        drop = set().union(*(leak.files_of_first() for leak in leaks))
        splits = dict(splits)
        for name in ("train", "val"):
            split = splits[name]
            splits[name] = split.take([i for i, f in enumerate(split.files) if f not in drop])
        message += f" dropped {len(drop)} image(s) from training and validation."
        for entry in report:
            entry["dropped"] = True
    warn(f"{message}\n{found}")
    return splits, report
