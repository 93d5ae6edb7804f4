"""Walking a folder for image files: links to folders followed once, never into a loop or
into another class's folder (where an image would carry the wrong label)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pneumonia.data.images import is_image_file
from pneumonia.errors import InputNotFoundError


@dataclass
class Walk:
    """What :func:`walk_files` found below a folder."""

    files: list[Path]  # sorted
    repeated: list[Path]  # links to a folder already walked: a second link to one folder
    refused: list[tuple[Path, Path]]  # (link, where it leads): loops, or out of the folder


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def walk_files(folder: Path, *, within: Path | None = None) -> Walk:
    """Every file below ``folder``, following links to folders, sorted.

    ``Path.rglob`` does not follow folder links before Python 3.13, which silently left out
    the images of a linked sub-folder. A link to a folder already walked is not followed again.
    Nor is a link back up to ``folder`` or one of its parents (a loop), or, with ``within``,
    one into another part of ``within`` (the split: another class folder), so that no image
    is listed under a class folder it is not in.
    """
    top = os.path.realpath(folder)
    bound = os.path.realpath(within) if within is not None else None
    walk = Walk([], [], [])
    walked: set[str] = set()
    for current, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(current)
        loops = real != top and _inside(top, real)
        elsewhere = bound is not None and _inside(real, bound) and not _inside(real, top)
        if loops or elsewhere:
            walk.refused.append((Path(current), Path(real)))
            dirs[:] = []
            continue
        if real in walked:
            walk.repeated.append(Path(current))
            dirs[:] = []
            continue
        walked.add(real)
        dirs.sort()
        walk.files.extend(Path(current) / n for n in names)
    walk.files.sort()
    return walk


def list_images(path: Path) -> list[Path]:
    """One image file, or every image file below a folder (links followed, sorted).

    Raises:
        FileNotFoundError: nothing there, or a folder without image files.
    """
    path = Path(path).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = [p for p in walk_files(path).files if is_image_file(p)]
        if not files:
            raise InputNotFoundError(f"input={path} holds no image files (.jpeg, .png, ...)")
        return files
    raise InputNotFoundError(f"input={path} does not exist: pass an image file or a folder")
