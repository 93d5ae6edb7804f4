"""Writing output files so that each one is complete or absent, whatever its name holds.

A run that fails half-way (an unencodable file name, a full disk, Ctrl-C) must not leave a
truncated ``predictions.csv`` or ``metrics.json`` that looks finished. Every output is written
to a temporary file beside its destination and renamed over it (atomic on POSIX); the old file,
if any, stays until the new one is whole.

File names that are not valid UTF-8 (common on shares written by other systems) reach Python
as strings with surrogate escapes; text outputs are written with ``errors="surrogateescape"``
so those names round-trip byte for byte.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

ENCODING = {"encoding": "utf-8", "errors": "surrogateescape"}


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed over ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_open(path: str | Path, newline: str | None = None) -> Iterator[IO[str]]:
    """``open(path, "w")`` that leaves ``path`` complete or untouched."""
    with atomic_path(path) as tmp, open(tmp, "w", newline=newline, **ENCODING) as f:
        yield f


def write_text(path: str | Path, text: str) -> None:
    """``Path.write_text``, atomically and with surrogate escapes."""
    with atomic_open(path) as f:
        f.write(text)
