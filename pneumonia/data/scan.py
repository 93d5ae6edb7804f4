"""Finding the Kaggle layout ``root/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg`` and its files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pneumonia.data.images import is_image_file

SPLITS = ("train", "val", "test")
EXPECTED_LAYOUT = "root/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg (val/ and test/ optional)"


class DataLayoutError(FileNotFoundError):
    """The data root does not hold the expected folder layout."""


@dataclass
class SplitListing:
    """Files of one split folder, labelled by their class folder."""

    files: list[Path]
    labels: list[int]
    ignored: list[Path] = field(default_factory=list)  # non-image files such as .DS_Store


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


def class_names(train_dir: Path) -> list[str]:
    """Class names from the train folder's sub-folders, sorted as ImageFolder sorts them."""
    classes = sorted(
        p.name for p in train_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
    )
    if len(classes) < 2:
        raise DataLayoutError(
            f"{train_dir} must hold one folder per class (e.g. NORMAL/ and PNEUMONIA/); "
            f"found {classes or 'none'} ({_describe(train_dir)})."
        )
    return classes


def list_split(split_dir: Path, classes: list[str]) -> SplitListing:
    """List image files of one split, checking its class folders match ``classes``.

    Raises:
        DataLayoutError: different class folders than train, or an empty class folder.
    """
    found = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if found != classes:
        raise DataLayoutError(
            f"{split_dir} has class folders {found}, but train/ has {classes}. "
            "Every split must hold the same class folders."
        )
    listing = SplitListing(files=[], labels=[])
    for label, name in enumerate(classes):
        n_before = len(listing.files)
        for path in sorted((split_dir / name).rglob("*")):
            if path.is_dir():
                continue
            hidden = any(part.startswith(".") for part in path.relative_to(split_dir).parts)
            if is_image_file(path) and not hidden:
                listing.files.append(path)
                listing.labels.append(label)
            else:
                listing.ignored.append(path)
        if len(listing.files) == n_before:
            raise DataLayoutError(
                f"Class folder {split_dir / name} holds no images (extensions: .jpeg, .jpg, .png,"
                " ...). Add images or remove the folder from every split."
            )
    return listing
