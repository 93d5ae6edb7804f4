"""What is in a data folder: the Kaggle layout ``root/{train,val,test}/{CLASS}/*``, a labelled
folder ``{CLASS}/*``, a folder of images to predict, and a summary table. No Lightning here.

Which of the listed files can be used is ``usable.py``'s concern."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pneumonia.data.images import is_image_file
from pneumonia.data.table import SplitListing
from pneumonia.data.walk import walk_files
from pneumonia.errors import InputNotFoundError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
EXPECTED_LAYOUT = "root/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg (val/ and test/ optional)"


class DataLayoutError(InputNotFoundError):
    """The data root does not hold the expected folder layout."""


def _describe(root: Path, limit: int = 8) -> str:
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
    if not entries:
        return "it is empty"
    shown = ", ".join(entries[:limit]) + (", ..." if len(entries) > limit else "")
    return f"it holds: {shown}"


def find_split_dirs(root: Path) -> dict[str, Path]:
    """Return the split folders under ``root``; ``train`` is required.

    Raises:
        DataLayoutError: the root is missing or does not look like the Kaggle layout.
    """
    fixes = "Point data.root=... at the folder holding train/, or run the demo: experiment=demo."
    if not root.exists():
        raise DataLayoutError(
            f"Data root {root} does not exist. Expected {EXPECTED_LAYOUT}. {fixes}"
        )
    if not root.is_dir():
        raise DataLayoutError(f"Data root {root} is a file, not a folder. {fixes}")
    if not (root / "train").is_dir():
        for nested in ("chest_xray", "chest-xray", "chest_xray_pneumonia"):
            if (root / nested / "train").is_dir():
                raise DataLayoutError(
                    f"Data root {root} holds the dataset one level down, in {nested}/. "
                    f"Use data.root={root / nested}"
                )
        raise DataLayoutError(
            f"Data root {root} has no train/ folder ({_describe(root)}). "
            f"Expected {EXPECTED_LAYOUT}. {fixes}"
        )
    return {s: root / s for s in SPLITS if (root / s).is_dir()}


def _folders(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))


def class_names(train_dir: Path, chosen: Sequence[str] | None = None) -> list[str]:
    """The two class folders of ``train_dir``, sorted as ImageFolder sorts them.

    Args:
        chosen: ``data.classes``: the two folders to use when ``train_dir`` holds more.

    Raises:
        DataLayoutError: other than two class folders and no choice, or a chosen folder that
            is not there.
    """
    found = _folders(train_dir)
    if chosen is not None:
        chosen = sorted(chosen)
        missing = [c for c in chosen if c not in found]
        if len(chosen) != 2 or missing:
            raise DataLayoutError(
                f"data.classes={list(chosen)} must name two of the class folders of "
                f"{train_dir}, which are {found}"
                + (f"; {missing} are not among them." if missing else ".")
            )
        left_out = [c for c in found if c not in chosen]
        if left_out:
            log.warning("Leaving out the class folders %s (data.classes=%s)", left_out, chosen)
        return chosen
    if len(found) < 2:
        raise DataLayoutError(
            f"{train_dir} must hold one folder per class (e.g. NORMAL/ and PNEUMONIA/); "
            f"found {found or 'none'} ({_describe(train_dir)})."
        )
    if len(found) > 2:
        raise DataLayoutError(
            f"{train_dir} holds {len(found)} class folders {found}, but the model is binary "
            f"(NORMAL vs PNEUMONIA). Choose the two to train on with data.classes=[NORMAL,"
            f"PNEUMONIA] (the others are left out, and the log lists them), or merge folders on "
            "disk to map several classes onto one."
        )
    return found


def labelled_folder(folder: Path, classes: Sequence[str]) -> SplitListing:
    """The images of a folder holding one sub-folder per class, labelled in ``classes`` order.

    A class folder may be missing or empty: a set of one class is evaluated for what it can
    tell (the specificity of NORMAL images alone, the sensitivity of PNEUMONIA images alone).

    Raises:
        DataLayoutError: a missing folder, class folders other than ``classes`` (both sets
            are named), or no images in any of them.
    """
    if not folder.is_dir():
        raise DataLayoutError(f"{folder} does not exist or is not a folder.")
    found = _folders(folder)
    if not found or not set(found) <= set(classes):
        raise DataLayoutError(
            f"{folder} has the class folders {found}, but the model was trained on "
            f"{list(classes)}. Point data.root at a folder holding "
            f"{', '.join(c + '/' for c in classes)} or some of them (or at one whose test/ "
            "does)."
        )
    listing = list_split(folder, list(classes), empty_ok=True)
    if not listing.files:
        raise DataLayoutError(
            f"The class folders {', '.join(c + '/' for c in found)} of {folder} hold no images "
            "(extensions: .jpeg, .jpg, .png, ...): put the images to evaluate in them."
        )
    return listing


def evaluation_folder(root: Path) -> Path:
    """The labelled folder to evaluate under ``root``: its ``test/`` (the Kaggle layout, with or
    without ``train/``), else ``root`` itself (``NORMAL/``, ``PNEUMONIA/`` directly).

    Raises:
        DataLayoutError: a Kaggle layout without ``test/``.
    """
    if (root / "test").is_dir():
        return root / "test"
    if (root / "train").is_dir():
        raise DataLayoutError(
            f"There is no test split: {root / 'test'} does not exist. Add a test/ folder with "
            "the same class folders as train/, or point data.root at a labelled folder."
        )
    return root


def list_split(
    split_dir: Path,
    classes: list[str],
    left_out: Sequence[str] | None = None,
    *,
    empty_ok: bool = False,
) -> SplitListing:
    """List image files of one split, checking its class folders match ``classes``.

    Args:
        empty_ok: a class folder may be missing or empty (an evaluation set of one class);
            training and its checks need both.

    Raises:
        DataLayoutError: different class folders than train, or an empty class folder.
    """
    found = _folders(split_dir)
    if empty_ok:
        classes = [c if c in found else "" for c in classes]  # "": listed as no images
    elif found != classes and not (left_out is not None and set(classes) <= set(found)):
        raise DataLayoutError(
            f"{split_dir} has class folders {found}, but train/ has {classes}. "
            "Every split must hold the same class folders."
        )
    listing = SplitListing(files=[], labels=[])
    for label, name in enumerate(classes):
        if not name:
            continue
        n_before = len(listing.files)
        walk = walk_files(split_dir / name, within=split_dir)
        for link in walk.repeated:
            log.warning(
                "Not following %s: it leads to %s, which is already listed (a second link to "
                "one folder); its images are counted once.",
                link,
                link.resolve(),
            )
        for link, target in walk.refused:
            log.warning(
                "Not following %s: it leads to %s, outside its class folder %s (a link loop, or "
                "into another class): its images would carry the wrong label.",
                link,
                target,
                split_dir / name,
            )
        listing.ignored.extend([*walk.repeated, *(link for link, _ in walk.refused)])
        for path in walk.files:
            hidden = any(part.startswith(".") for part in path.relative_to(split_dir).parts)
            if is_image_file(path) and not hidden:
                listing.files.append(path)
                listing.labels.append(label)
            else:
                listing.ignored.append(path)
        if len(listing.files) == n_before and not empty_ok:
            optional = split_dir.name in ("val", "test")
            raise DataLayoutError(
                f"Class folder {split_dir / name} holds no images (extensions: .jpeg, .jpg, .png,"
                f" ...). Training and its checks need images of each class ({', '.join(classes)})"
                " in every split: add images to it"
                + (f", or remove the whole {split_dir.name}/ split (it is optional)" if optional
                   else "") + "."
            )  # fmt: skip
    _one_label_each(listing, classes)
    return listing


def _one_label_each(listing: SplitListing, classes: Sequence[str]) -> None:
    """One image never carries two labels: a file linked into two class folders is refused.

    Raises:
        DataLayoutError: naming each such file, where it was found, and both labels.
    """
    seen: dict[str, tuple[Path, int]] = {}
    clashes = []
    for path, label in zip(listing.files, listing.labels, strict=True):
        real = os.path.realpath(path)
        first = seen.setdefault(real, (path, label))
        if first[1] != label:
            clashes.append(f"  {real}: as {classes[first[1]]} ({first[0]}) and as "
                           f"{classes[label]} ({path})")  # fmt: skip
    if clashes:
        raise DataLayoutError(
            f"{len(clashes)} image(s) would carry two labels, reached through links in two "
            "class folders:\n" + "\n".join(clashes[:20]) + "\nRemove the links (or copies) "
            "so that each image is in the folder of its one class."
        )


@dataclass
class DataIndex:
    """Every split folder of a data root, listed and labelled by class folder."""

    root: Path
    classes: list[str]
    splits: dict[str, SplitListing]
    skipped: dict[str, str] = field(default_factory=dict)  # resolved path -> reason

    @classmethod
    def scan(cls, root: Path, classes: Sequence[str] | None = None) -> DataIndex:
        """List ``root``'s splits; a wrong layout raises :class:`DataLayoutError`.

        Args:
            classes: ``data.classes``, the two class folders to use where there are more.
        """
        dirs = find_split_dirs(root)
        names = class_names(dirs["train"], classes)
        chosen = classes if classes is None else names
        return cls(root, names, {split: list_split(d, names, chosen) for split, d in dirs.items()})

    def all_files(self) -> list[Path]:
        return [f for listing in self.splits.values() for f in listing.files]


def summary_table(
    root: Path, classes: list[str], rows: dict[str, tuple[list[int], int]], skipped: int
) -> str:
    """Images per split and class, patients per split, skipped files, as aligned text.

    Args:
        rows: split -> (images per class in class order, number of patients).
    """
    head = ["split", *classes, "total", "patients"]
    table = [head]
    for split, (counts, patients) in rows.items():
        table.append([split, *map(str, counts), str(sum(counts)), str(patients)])
    widths = [max(len(r[c]) for r in table) for c in range(len(head))]
    lines = [
        "  ".join(
            v.ljust(w) if c == 0 else v.rjust(w)
            for c, (v, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in table
    ]
    lines.append(f"skipped files: {skipped}")
    return f"Data at {root}:\n" + "\n".join(lines)
