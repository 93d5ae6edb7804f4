"""The data index: the folder layout and its image files, no Lightning."""

from __future__ import annotations

from pathlib import Path

import pytest

from pneumonia.data.index import DataIndex, DataLayoutError, summary_table


def test_index_lists_every_split_with_labels_from_the_class_folders(tiny_root: Path) -> None:
    index = DataIndex.scan(tiny_root)
    assert index.classes == ["NORMAL", "PNEUMONIA"]
    assert set(index.splits) == {"train", "val", "test"}
    for split, listing in index.splits.items():
        for path, label in zip(listing.files, listing.labels, strict=True):
            assert path.parent.name == index.classes[label]
            assert path.parent.parent.name == split
        assert len(listing.files) == len(list((tiny_root / split).rglob("*.jpeg")))


def test_root_that_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(DataLayoutError, match=r"does not exist.*data\.root=.*experiment=demo"):
        DataIndex.scan(tmp_path / "nope")


def test_root_with_chest_xray_one_level_down(tiny_root: Path, tmp_path: Path) -> None:
    outer = tmp_path / "download"
    outer.mkdir()
    (outer / "chest_xray").symlink_to(tiny_root)
    with pytest.raises(DataLayoutError, match=r"one level down.*data\.root=.*chest_xray"):
        DataIndex.scan(outer)


def test_root_without_train_lists_what_it_found(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "labels.csv").write_text("a,b\n")
    with pytest.raises(DataLayoutError, match=r"no train/ folder.*images/, labels\.csv"):
        DataIndex.scan(tmp_path)


def test_val_with_other_class_folders_is_an_error(tiny_copy: Path) -> None:
    (tiny_copy / "val" / "PNEUMONIA").rename(tiny_copy / "val" / "BACTERIA")
    expected = r"\['BACTERIA', 'NORMAL'\].*\['NORMAL', 'PNEUMONIA'\]"
    with pytest.raises(DataLayoutError, match=expected):
        DataIndex.scan(tiny_copy)


def test_empty_class_folder_is_an_error(tiny_copy: Path) -> None:
    for f in (tiny_copy / "test" / "NORMAL").iterdir():
        f.unlink()
    (tiny_copy / "test" / "NORMAL" / ".DS_Store").write_bytes(b"\0\0")
    with pytest.raises(DataLayoutError, match=r"test/NORMAL holds no images"):
        DataIndex.scan(tiny_copy)


def test_non_image_files_are_ignored_and_listed(tiny_copy: Path) -> None:
    normal = tiny_copy / "train" / "NORMAL"
    junk = {
        normal / ".DS_Store": b"\0\1\2",
        normal / "Thumbs.db": b"\0\1\2",
        normal / "notes.txt": b"seen by a radiologist",
        normal / "._IM-0001-0001.jpeg": b"\0\5\0\7",  # macOS resource fork
    }
    for path, data in junk.items():
        path.write_bytes(data)
    train = DataIndex.scan(tiny_copy).splits["train"]
    assert all(f.suffix == ".jpeg" and not f.name.startswith(".") for f in train.files)
    assert set(train.ignored) == set(junk)


# ----------------------------------------------------------------------------- bad images
def test_summary_table_aligns_counts_per_split_and_class() -> None:
    text = summary_table(
        Path("/data"), ["NORMAL", "PNEUMONIA"], {"train": ([10, 200], 150), "val": ([1, 2], 3)}, 4
    )
    lines = text.splitlines()
    assert lines[0] == "Data at /data:"
    assert lines[1].split() == ["split", "NORMAL", "PNEUMONIA", "total", "patients"]
    assert lines[2].split() == ["train", "10", "200", "210", "150"]
    assert lines[3].split() == ["val", "1", "2", "3", "3"]
    assert len({len(line) for line in lines[1:4]}) == 1  # one column width for every row
    assert lines[-1] == "skipped files: 4"


# ----------------------------------------------------------------------------- folder links
def test_images_in_a_linked_subfolder_are_listed(tiny_copy: Path, tmp_path: Path) -> None:
    import shutil

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for f in sorted((tiny_copy / "test" / "PNEUMONIA").iterdir())[:2]:
        shutil.move(f, elsewhere / f.name)
    before = len(DataIndex.scan(tiny_copy).splits["train"].files)
    (tiny_copy / "train" / "PNEUMONIA" / "more").symlink_to(elsewhere, target_is_directory=True)
    listing = DataIndex.scan(tiny_copy).splits["train"]
    assert len(listing.files) == before + 2
    linked = [f for f in listing.files if f.parent.name == "more"]
    assert len(linked) == 2
    assert {listing.labels[listing.files.index(f)] for f in linked} == {1}


def test_a_link_loop_is_walked_once_and_reported(
    tiny_copy: Path, caplog: pytest.LogCaptureFixture
) -> None:
    normal = tiny_copy / "train" / "NORMAL"
    images = len(list(normal.glob("*.jpeg")))
    (normal / "loop").symlink_to(normal, target_is_directory=True)  # points at its own parent
    listing = DataIndex.scan(tiny_copy).splits["train"]
    assert listing.labels.count(0) == images
    assert normal / "loop" in listing.ignored
    assert "Not following" in caplog.text


def test_a_link_up_out_of_its_class_folder_is_not_followed(
    tiny_copy: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """train/NORMAL/loop -> .. would list every PNEUMONIA image as NORMAL too."""
    normal = tiny_copy / "train" / "NORMAL"
    images = len(list(normal.glob("*.jpeg")))
    (normal / "loop").symlink_to("..", target_is_directory=True)
    (normal / "root").symlink_to(tiny_copy, target_is_directory=True)  # the data root itself
    listing = DataIndex.scan(tiny_copy).splits["train"]
    assert listing.labels.count(0) == images
    assert listing.labels.count(1) == len(list((tiny_copy / "train" / "PNEUMONIA").glob("*")))
    assert {normal / "loop", normal / "root"} <= set(listing.ignored)
    assert caplog.text.count("outside its class folder") == 2


def test_a_link_into_another_class_folder_is_not_followed(tiny_copy: Path) -> None:
    normal = tiny_copy / "train" / "NORMAL"
    (normal / "sick").symlink_to(tiny_copy / "train" / "PNEUMONIA", target_is_directory=True)
    listing = DataIndex.scan(tiny_copy).splits["train"]
    assert not any("sick" in f.parts for f in listing.files)
    assert normal / "sick" in listing.ignored


def test_an_image_linked_into_two_class_folders_is_refused_by_name(tiny_copy: Path) -> None:
    pneumonia = sorted((tiny_copy / "train" / "PNEUMONIA").glob("*.jpeg"))[0]
    (tiny_copy / "train" / "NORMAL" / "looks_normal.jpeg").symlink_to(pneumonia)
    with pytest.raises(DataLayoutError, match=r"(?s)two labels.*as NORMAL.*as PNEUMONIA") as info:
        DataIndex.scan(tiny_copy)
    assert pneumonia.name in str(info.value)
    assert "looks_normal.jpeg" in str(info.value)


# ----------------------------------------------------------------------------- a third class
@pytest.fixture
def with_covid(tiny_copy: Path) -> Path:
    """A COVID/ folder beside NORMAL/ and PNEUMONIA/ in train/ and test/."""
    import shutil

    for split in ("train", "test"):
        covid = tiny_copy / split / "COVID"
        covid.mkdir()
        for f in sorted((tiny_copy / split / "PNEUMONIA").iterdir())[:2]:
            shutil.copy(f, covid / f"covid_{f.name}")
    return tiny_copy


def test_a_third_class_folder_is_refused_at_setup_with_the_way_out(with_covid: Path) -> None:
    with pytest.raises(DataLayoutError, match=r"3 class folders.*COVID.*binary.*data\.classes="):
        DataIndex.scan(with_covid)


def test_data_classes_chooses_two_and_names_the_rest(
    with_covid: Path, caplog: pytest.LogCaptureFixture
) -> None:
    index = DataIndex.scan(with_covid, ["PNEUMONIA", "NORMAL"])
    assert index.classes == ["NORMAL", "PNEUMONIA"]
    for listing in index.splits.values():
        assert not any(f.parent.name == "COVID" for f in listing.files)
        assert set(listing.labels) == {0, 1}
    assert "COVID" in caplog.text
    with pytest.raises(DataLayoutError, match=r"BACTERIA.*not among them"):
        DataIndex.scan(with_covid, ["NORMAL", "BACTERIA"])
