"""Building the decoded-image cache (:mod:`pneumonia.data.cache` reads it).

At the scale of the large collections (377,000 images at 256 px: about 25 GB) the build
decodes in worker processes, one chunk at a time (memory does not grow with the number of
images), shows its progress, and resumes after an interruption without decoding the finished
images again; one process builds while others (DDP ranks, a second run) wait for it. Each
file's content hash is kept, so that a second run's leak check reads no image again.

SIGTERM (a scheduler's preemption) and Ctrl-C end a build as they end training: the workers
end with it (:mod:`pneumonia.system.pools`; they ignore Ctrl-C themselves, so none prints a
traceback), the log says how far it got and that the same command continues it, and the
process exits with 128 + the signal's number. Nothing is half-written: what lies past the last
whole chunk is cut when the build resumes.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
import signal
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pneumonia.data.images import BadImageError
from pneumonia.system.pools import mapper

log = logging.getLogger(__name__)

CACHE_VERSION = 3
# The files of a built cache
PIXELS, INDEX, META, HASHES = "pixels.u8", "index.npy", "meta.json", "hashes.txt"


def build_cache(
    files: list[Path],
    directory: Path,
    decode: Callable[[Path], np.ndarray],
    settings: dict[str, Any],
    workers: int,
) -> None:
    """Decode ``files`` into ``directory``: in chunks, in parallel processes where
    ``decode`` can be sent to them, resuming a build that was interrupted, one builder at a
    time (the others wait, then read what it built)."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(directory.parent / ".locks" / f"{directory.name}.lock") as locked:
        if (directory / META).is_file():
            return  # built by another process (a DDP rank, a second run) while we waited
        # Without a lock, builders could meet in one partial folder: each gets its own,
        # and an interrupted build starts over.
        suffix = "" if locked else f"-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        partial = directory.parent / f".partial-{directory.name}{suffix}"
        build = _PartialBuild(partial, len(files))
        if not build.complete:
            _decode_into(build, files, decode, workers)
            build.finish(
                {
                    "version": CACHE_VERSION,
                    "settings": settings,
                    "files": [str(f) for f in files],
                    "bad": build.bad(files),
                }
            )
        try:
            partial.rename(directory)  # atomic: readers never see a half-written cache
        except OSError:
            if locked or not (directory / META).is_file():
                raise
            shutil.rmtree(partial)  # an unlocked builder finished the same cache first
    log.info("Cached %d images (%.1f MB) in %s", len(files), build.end / 1e6, directory)


def _decode_into(
    build: _PartialBuild, files: list[Path], decode: Callable[[Path], np.ndarray], workers: int
) -> None:
    """Decode the files ``build`` has not done yet, a chunk at a time, with progress."""
    if build.done:
        log.info("Resuming the decoded-image cache at image %d of %d", build.done, len(files))
    processes = len(files) - build.done >= PROCESS_MIN_IMAGES
    with (
        _stoppable(build, len(files)),
        mapper(functools.partial(_decode_one, decode), workers, processes=processes) as run,
        tqdm(total=len(files), initial=build.done, desc="Caching images", unit="img") as bar,
    ):
        for start in range(build.done, len(files), BUILD_CHUNK):
            chunk = files[start : start + BUILD_CHUNK]
            build.append(chunk, run(chunk))  # one chunk in memory at a time
            bar.update(len(chunk))


# Images decoded per step of a build: what an interruption can lose, and what is in memory.
BUILD_CHUNK = 512
# Fewer images than this decode in threads: starting worker processes costs more than it saves.
PROCESS_MIN_IMAGES = 2048


def content_hash(path: Path) -> str:
    """A file's content hash (BLAKE2b, 128 bits): identical images in two splits share it."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _decode_one(decode: Callable[[Path], np.ndarray], path: Path) -> tuple[str, Any]:
    """(content hash, pixels) of ``path``, or (hash, reason) where it is a bad image."""
    try:
        digest = content_hash(path)
    except OSError as e:
        return "", f"cannot read file ({e.strerror})"
    try:
        return digest, decode(path)
    except BadImageError as e:
        return digest, str(e)


class _Stopped(BaseException):
    """A signal that ends the build (a BaseException: no ``except Exception`` swallows it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def _stoppable(build: _PartialBuild, total: int):
    """SIGTERM and Ctrl-C during the block: say how far the build got and how to continue,
    then ``SystemExit(128 + signal)`` (training's handlers add their own resume message)."""

    def stop(signum: int, frame: Any) -> None:
        raise _Stopped(signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():  # only it may set handlers
        previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    except _Stopped as e:
        signum = e.signum
        log.warning(
            "The decoded-image cache build was stopped (%s) at image %d of %d. The images "
            "decoded so far are kept (%s): the same command continues from there.",
            signal.Signals(signum).name, build.done, total, build.folder,
        )  # fmt: skip
        raise SystemExit(128 + signum) from None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def _exclusive(lock: Path):
    """Hold an exclusive lock on ``lock`` (flock: released if the holder dies); yields
    whether it is held (False without flock: Windows, some network file systems)."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+") as handle:
        try:
            import fcntl

            fcntl.flock(handle, fcntl.LOCK_EX)
        except (ImportError, OSError):
            yield False
        else:
            yield True


class _PartialBuild:
    """A build in progress, on disk, so that an interrupted one resumes where it stopped.

    Per chunk, the pixels are appended first, then each image's hash and bad-image reason,
    and last its row of the index (offset, height, width): a row in the index is the mark
    that everything before it is written. On resume, whatever lies past the last row is cut.
    """

    ROW = 3 * 8  # int64 offset, height, width

    def __init__(self, folder: Path, total: int):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.complete = (folder / META).is_file()  # finished, only the rename was missed
        if self.complete:
            self.done, self.end = total, (folder / PIXELS).stat().st_size
            return
        rows = folder / "index.part"
        size = rows.stat().st_size if rows.exists() else 0
        self.done = min(size // self.ROW, total)
        index = (
            np.fromfile(rows, dtype=np.int64, count=self.done * 3).reshape(-1, 3)
            if self.done
            else np.zeros((0, 3), dtype=np.int64)
        )
        self.end = int((index[:, 0] + index[:, 1] * index[:, 2]).max()) if self.done else 0
        _cut(rows, self.done * self.ROW)
        _cut(folder / PIXELS, self.end)
        hashes = _lines(folder / "hashes.part")[: self.done]
        bad = [b for b in _lines(folder / "bad.part") if int(b.split("\t", 1)[0]) < self.done]
        (folder / "hashes.part").write_text("".join(h + "\n" for h in hashes))
        (folder / "bad.part").write_text("".join(b + "\n" for b in bad))

    def append(self, files: list[Path], results: list[tuple[str, Any]]) -> None:
        rows, hashes, bad = [], [], []
        with open(self.folder / PIXELS, "ab") as out:
            for path, (digest, pixels) in zip(files, results, strict=True):
                hashes.append(digest)
                if isinstance(pixels, str):
                    bad.append(f"{self.done + len(rows)}\t{path}\t{pixels}".replace("\n", " "))
                    rows.append((self.end, 0, 0))
                    continue
                out.write(pixels.tobytes())
                rows.append((self.end, *pixels.shape))
                self.end += pixels.size
        with open(self.folder / "hashes.part", "a") as f:
            f.write("".join(h + "\n" for h in hashes))
        with open(self.folder / "bad.part", "a") as f:
            f.write("".join(b + "\n" for b in bad))
        # On disk before the rows that vouch for them (a power cut must not leave rows
        # pointing past the pixels).
        _sync(self.folder / PIXELS, self.folder / "hashes.part", self.folder / "bad.part")
        with open(self.folder / "index.part", "ab") as f:  # last: the mark of a whole chunk
            f.write(np.asarray(rows, dtype=np.int64).tobytes())
        self.done += len(files)

    def bad(self, files: list[Path]) -> dict[str, str]:
        entries = (line.split("\t", 2) for line in _lines(self.folder / "bad.part"))
        return {str(files[int(i)]): reason for i, _, reason in entries}

    def finish(self, meta: dict[str, Any]) -> None:
        """The cache's own files, written beside the parts; ``meta.json`` last marks it whole
        (an interruption before that resumes from the parts, which are still there)."""
        if self.complete:
            return
        index = np.fromfile(self.folder / "index.part", dtype=np.int64).reshape(-1, 3)
        np.save(self.folder / INDEX, index)
        shutil.copyfile(self.folder / "hashes.part", self.folder / HASHES)
        _sync(self.folder / PIXELS, self.folder / INDEX, self.folder / HASHES)
        (self.folder / META).write_text(json.dumps(meta))
        for name in ("index.part", "bad.part", "hashes.part"):
            (self.folder / name).unlink()


def _sync(*paths: Path) -> None:
    for path in paths:
        with open(path, "rb+") as f:
            os.fsync(f.fileno())


def _cut(path: Path, size: int) -> None:
    with open(path, "ab") as f:
        f.truncate(size)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []
