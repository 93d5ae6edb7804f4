"""Patient identity: which images belong to one patient, from Kermany's file names.

Any split, leak check or holdout works on patients, not images: several images of one patient
on both sides of a split inflate every figure computed on the later side.
"""

from __future__ import annotations

import re
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
