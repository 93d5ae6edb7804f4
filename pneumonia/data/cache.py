"""A decoded-image cache: every file decoded and resized once, stored as uint8 in a memmap.

Decoding JPEGs dominates a CPU data pipeline (110-190 img/s with PIL against 1,400-1,700 img/s
from a uint8 cache on the machines measured so far). The cache is keyed by the file list with
sizes and mtimes and by the decode settings (resolution, interpolation, pixel and enlargement
limits), so a changed dataset or setting never reads stale pixels. Files that fail to decode
are recorded in the cache too, so a second run knows them at once, and so is each file's
content hash, so that the leak check of a second run reads no image again.

How a cache is built, at the scale of the large collections: :mod:`pneumonia.data.cache_build`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from pneumonia.data.cache_build import CACHE_VERSION, HASHES, INDEX, META, PIXELS, build_cache
from pneumonia.data.dicom import DECODE_REVISION
from pneumonia.data.images import BadImageError
from pneumonia.system.runtime import decode_threads

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``$PNEUMONIA_CACHE_DIR``, else ``$XDG_CACHE_HOME/pneumonia``, else ``~/.cache/pneumonia``.

    The one place that resolves it: ``paths.cache_dir=null`` in the config means this.
    """
    if os.environ.get("PNEUMONIA_CACHE_DIR"):
        return Path(os.environ["PNEUMONIA_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pneumonia"


def cache_folder(enabled: bool, folder: str | Path | None) -> Path | None:
    """Where to cache: ``folder``, else :func:`default_cache_dir`; None when not ``enabled``."""
    if not enabled:
        return None
    return Path(folder).expanduser() if folder else default_cache_dir()


def cache_key(files: Sequence[Path], settings: dict[str, Any]) -> str:
    """Hash of what decides the cached pixels: files, their sizes/mtimes, decode settings."""
    # DECODE_REVISION: a changed DICOM decode never reads the pixels of the one before
    h = hashlib.sha256(
        json.dumps([CACHE_VERSION, DECODE_REVISION, settings], sort_keys=True).encode()
    )
    for f in files:
        try:
            st = f.stat()
            sized = f"\t{st.st_size}\t{st.st_mtime_ns}"
        except OSError:  # gone (a link whose target went): its decode reports it as a bad image
            sized = "\tmissing"
        # os.fsencode: names that are not UTF-8 hash by their bytes instead of failing.
        h.update(b"\n" + os.fsencode(f.resolve()) + sized.encode())
    return h.hexdigest()[:20]


class DecodedImageCache:
    """Read side of a built cache. Pickles without its memmap, so DataLoader workers reopen it."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        meta = json.loads((self.directory / META).read_text())
        if meta.get("version") != CACHE_VERSION:
            raise ValueError(f"cache {directory} has version {meta.get('version')}")
        self.settings: dict[str, Any] = meta["settings"]
        self.files: list[str] = meta["files"]
        self.bad: dict[str, str] = meta["bad"]
        self._index = np.load(self.directory / INDEX)  # (N, 3): offset, height, width
        self._position = {f: i for i, f in enumerate(self.files)}
        self._pixels: np.memmap | None = None

    def __len__(self) -> int:
        return len(self.files)

    def __contains__(self, path: Path) -> bool:
        return str(Path(path).resolve()) in self._position

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_pixels"] = None
        state.pop("hashes", None)  # DataLoader workers need pixels, not the leak check's hashes
        return state

    def get(self, path: Path) -> np.ndarray:
        """(H, W) uint8 pixels of ``path``, a fresh writable copy."""
        i = self._position[str(Path(path).resolve())]
        offset, h, w = (int(v) for v in self._index[i])
        if h == 0:
            raise BadImageError(self.bad.get(self.files[i], "unreadable image"))
        if self._pixels is None:
            self._pixels = np.memmap(self.directory / PIXELS, dtype=np.uint8, mode="r")
        return np.array(self._pixels[offset : offset + h * w]).reshape(h, w)

    @classmethod
    def open_or_build(
        cls,
        files: Sequence[Path],
        *,
        decode: Callable[[Path], np.ndarray],
        settings: dict[str, Any],
        cache_dir: Path,
        num_threads: int | None = None,
    ) -> DecodedImageCache:
        """Open the cache for exactly these files and settings, building it if absent.

        Args:
            decode: path -> (H, W) uint8 pixels; raises ``BadImageError`` for unusable files.
            settings: every setting that changes what ``decode`` returns (``resize_size``
                names the cache folder).
        """
        files = sorted({Path(f).resolve() for f in files}, key=str)
        name = f"{settings.get('resize_size', 'x')}px-{cache_key(files, settings)}"
        directory = Path(cache_dir) / name
        if (directory / META).is_file():
            try:
                cache = cls(directory)
                whole = (directory / PIXELS).stat().st_size == int(
                    cache._index[:, 1:].prod(1).sum()
                ) and len(cache.hashes) == len(cache.files)
                if whole:
                    log.info("Reading decoded images from cache %s", directory)
                    return cache
            except (OSError, ValueError, KeyError) as e:  # damaged since it was built
                log.warning("Rebuilding the damaged decoded-image cache %s (%s)", directory, e)
            else:
                log.warning("Rebuilding the decoded-image cache %s: its pixels are cut short",
                            directory)  # fmt: skip
            shutil.rmtree(directory, ignore_errors=True)
        build_cache(files, directory, decode, settings, num_threads or decode_threads())
        return cls(directory)

    @cached_property
    def hashes(self) -> dict[str, str]:
        """Resolved path -> content hash (``cache_build.content_hash``) of every cached file,
        computed when the cache was built: the leak check needs no second read of the images.
        Read once (the check that the cache is whole reads it first)."""
        lines = (self.directory / HASHES).read_text().splitlines()
        return dict(zip(self.files, lines, strict=True))
