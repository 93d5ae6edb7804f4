"""Usable images: each file decoded once, the bad-image policy applied, new listings returned."""

from __future__ import annotations

from pathlib import Path

import pytest

from pneumonia.data import Preprocessing
from pneumonia.data.index import DataIndex
from pneumonia.data.usable import BadImagesError, usable_images, verify_images

PRE = Preprocessing(resize_size=40, crop_size=32)


def _break_two(root: Path) -> list[Path]:
    normal = sorted((root / "train" / "NORMAL").glob("*.jpeg"))
    normal[0].write_bytes(b"")
    normal[1].write_bytes(b"<html>not found</html>")
    return normal[:2]


def test_verify_names_each_unusable_file_with_its_reason(tiny_copy: Path) -> None:
    broken = _break_two(tiny_copy)
    index = DataIndex.scan(tiny_copy)
    bad = verify_images(index.all_files(), PRE.decode)
    assert set(bad) == {str(p.resolve()) for p in broken}
    assert "empty file" in bad[str(broken[0].resolve())]


@pytest.mark.parametrize("cached", [False, True])
def test_error_policy_lists_every_bad_file_and_the_way_out(
    tiny_copy: Path, tmp_path: Path, cached: bool
) -> None:
    broken = _break_two(tiny_copy)
    index = DataIndex.scan(tiny_copy)
    with pytest.raises(BadImagesError) as info:
        usable_images(
            index.splits,
            PRE,
            cache_dir=tmp_path / "cache" if cached else None,
            policy="error",
            warn=pytest.fail,
            where=tiny_copy,
        )
    message = str(info.value)
    assert all(p.name in message for p in broken)
    assert "data.on_bad_image=skip" in message
    assert str(tiny_copy) in message


@pytest.mark.parametrize("cached", [False, True])
def test_skip_policy_drops_warns_and_leaves_its_argument_alone(
    tiny_copy: Path, tmp_path: Path, cached: bool
) -> None:
    broken = _break_two(tiny_copy)
    index = DataIndex.scan(tiny_copy)
    before = list(index.splits["train"].files)
    warnings: list[str] = []
    usable = usable_images(
        index.splits,
        PRE,
        cache_dir=tmp_path / "cache" if cached else None,
        policy="skip",
        warn=warnings.append,
        where=tiny_copy,
    )
    train = usable.listings["train"]
    assert len(train.files) == len(train.labels) == len(before) - 2
    assert not set(train.files) & set(broken)
    assert index.splits["train"].files == before  # a new listing; the given one is untouched
    assert len(warnings) == 1
    assert all(p.name in warnings[0] for p in broken)
    assert set(usable.skipped) == {str(p.resolve()) for p in broken}
    kept = train.files[0]
    assert usable.decode(kept).shape == PRE.decode(kept).shape  # the others can be read


def test_an_unknown_policy_is_refused(tiny_root: Path) -> None:
    with pytest.raises(ValueError, match="on_bad_image='ignore'"):
        usable_images({}, PRE, cache_dir=None, policy="ignore", warn=print, where=tiny_root)


def test_an_image_the_resize_would_enlarge_too_much_is_a_bad_image(
    tiny_copy: Path, tmp_path: Path
) -> None:
    """A 1 x 1 file, upscaled, would be trained on as a flat grey field; an image narrower than
    the crop that the resize (here to 40 px) enlarges at most 4x is an image like any other."""
    import numpy as np
    from PIL import Image

    normal = tiny_copy / "train" / "NORMAL"
    tiny = normal / "IM-9998-0001.png"
    Image.fromarray(np.full((1, 1), 128, np.uint8)).save(tiny)
    narrow = normal / "IM-9997-0001.png"
    Image.fromarray(np.full((9, 200), 128, np.uint8)).save(narrow)  # 40 / 9: 4.4x
    fine = normal / "IM-9996-0001.png"
    Image.fromarray(np.full((10, 200), 128, np.uint8)).save(fine)  # 4x, and under the 32 crop
    index = DataIndex.scan(tiny_copy)
    for cache_dir in (None, tmp_path / "cache"):
        with pytest.raises(BadImagesError) as info:
            usable_images(index.splits, PRE, cache_dir=cache_dir, policy="error",
                          warn=print, where=tiny_copy)  # fmt: skip
        message = str(info.value)
        assert "1x1 pixels: resizing it to a shorter side of 40 px would enlarge it 40x" in message
        assert "200x9 pixels" in message
        assert fine.name not in message
        assert message.count("enlarge it") == 2
        assert "data.max_upscale" in message
        assert "data.on_bad_image=skip" in message
        usable = usable_images(index.splits, PRE, cache_dir=cache_dir, policy="skip",
                               warn=print, where=tiny_copy)  # fmt: skip
        assert fine in usable.listings["train"].files
        assert usable.decode(fine).shape == (40, 800)
