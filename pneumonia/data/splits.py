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
from collections.abc import Sequence
from pathlib import Path

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
    return hashlib.sha256(f"{seed}:{group}".encode()).hexdigest()


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
