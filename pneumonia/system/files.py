"""Writing output files so that each one is complete or absent, whatever its name holds.

A run that fails half-way (an unencodable file name, a full disk, Ctrl-C) must not leave a
truncated ``predictions.csv`` or ``metrics.json`` that looks finished. Every output is written
to a temporary file beside its destination and renamed over it (atomic on POSIX); the old file,
if any, stays until the new one is whole.

File names that are not valid UTF-8 (common on shares written by other systems) reach Python
as strings with surrogate escapes; text outputs are written with ``errors="surrogateescape"``
so those names round-trip byte for byte.

An output gets the mode a plain ``open(path, "w")`` would have given it: an existing file keeps
its own, a new one gets ``0o666`` less the umask. (A temporary file is created 0600, which
would otherwise make ``metrics.json`` and the best checkpoint unreadable to a group that can
read ``last.ckpt``.)
"""

from __future__ import annotations

import contextlib
import os
import stat
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
        os.chmod(tmp, plain_write_mode(path))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def umask() -> int:
    """The process's umask, read without changing it where Linux tells it (``/proc``)."""
    with contextlib.suppress(OSError, ValueError, StopIteration), open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)  # elsewhere the only way to read it is to set it, and set it back
    os.umask(mask)
    return mask


def plain_write_mode(path: Path) -> int:
    """The permission bits ``open(path, "w")`` would leave ``path`` with."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return 0o666 & ~umask()


@contextlib.contextmanager
def atomic_open(path: str | Path, newline: str | None = None) -> Iterator[IO[str]]:
    """``open(path, "w")`` that leaves ``path`` complete or untouched."""
    with atomic_path(path) as tmp, open(tmp, "w", newline=newline, **ENCODING) as f:
        yield f


def write_text(path: str | Path, text: str) -> None:
    """``Path.write_text``, atomically and with surrogate escapes."""
    with atomic_open(path) as f:
        f.write(text)
