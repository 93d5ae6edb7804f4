"""Preprocessing: one definition of how a file becomes the model's input, stored and restored."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pneumonia.data import ChestXRayDataModule, Preprocessing, PreprocessingError
from pneumonia.data.transforms import IMAGENET_MEAN, IMAGENET_STD


def test_the_datamodule_builds_its_preprocessing_from_its_arguments(tmp_path: Path) -> None:
    dm = ChestXRayDataModule(
        tmp_path, resize_size=72, crop_size=64, interpolation="bilinear", max_pixels=10**6
    )
    assert dm.preprocessing == Preprocessing(
        resize_size=72, crop_size=64, interpolation="bilinear", max_pixels=10**6
    )
    assert dm.collate is dm.preprocessing.collate
    assert dm.eval_transform is dm.preprocessing.eval_transform


def test_load_gives_exactly_what_the_eval_loader_gives(tiny_root: Path, tmp_path: Path) -> None:
    dm = ChestXRayDataModule(
        tiny_root, cache_dir=tmp_path, resize_size=40, crop_size=32, batch_size=4
    )
    dm.setup("test")
    batch, _ = next(iter(dm.test_dataloader()))
    pre = dm.preprocessing
    mine, _ = pre.collate([(pre.load(f), 0) for f in dm.files("test")[:4]])
    assert torch.equal(mine, batch)


def test_a_record_round_trips_and_must_be_complete() -> None:
    pre = Preprocessing(resize_size=300, crop_size=288, interpolation="lanczos", mean=(0.5,) * 3)
    record = pre.to_dict()
    assert record["mean"] == [0.5, 0.5, 0.5]  # plain lists: a checkpoint holds no tuples
    assert Preprocessing.from_dict(record) == pre
    incomplete = {k: v for k, v in record.items() if k != "interpolation"}
    with pytest.raises(PreprocessingError, match="interpolation"):
        Preprocessing.from_dict(incomplete)
    with pytest.raises(PreprocessingError, match="exactly the fields"):
        Preprocessing.from_dict({**record, "hflip_prob": 0.5})
    with pytest.raises(PreprocessingError):
        Preprocessing.from_dict(None)
    # checkpoints written before the enlargement rule (issue 26) get today's default
    older = {k: v for k, v in record.items() if k != "max_upscale"}
    assert Preprocessing.from_dict(older).max_upscale == 4.0
    assert Preprocessing.from_dict({**record, "max_upscale": 8}).max_upscale == 8.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"resize_size": 200, "crop_size": 224}, "crop_size"),
        ({"interpolation": "cubic"}, "data.interpolation='cubic'; valid: bicubic"),
    ],
)
def test_impossible_preprocessing_is_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Preprocessing(**kwargs)


def test_normalized_black_is_what_the_collate_makes_of_a_black_pixel() -> None:
    pre = Preprocessing()
    black, _ = pre.collate([(torch.zeros(1, 2, 2, dtype=torch.uint8), 0)])
    assert black[0, :, 0, 0].tolist() == pytest.approx(pre.normalized(0.0))
    expected = [-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    assert pre.normalized(0.0) == pytest.approx(expected)


def test_describe_names_every_step_a_deployment_must_reproduce() -> None:
    described = Preprocessing(resize_size=144, crop_size=128).describe()
    steps = "\n".join(described["steps"])
    for needle in ("EXIF", "gray", "16-bit", "144 px (bicubic", "center crop 128", "mean"):
        assert needle in steps, needle
    assert described["interpolation"] == "bicubic"
    assert described["channels"] == 3


@pytest.mark.parametrize(("orientation", "turns"), [(6, -1), (8, 1), (3, 2)])
def test_the_exif_orientation_is_applied(tmp_path: Path, orientation: int, turns: int) -> None:
    """A photographed or exported X-ray stored sideways, with the EXIF tag that says so."""
    import numpy as np
    from PIL import Image

    from pneumonia.data.images import load_gray

    pixels = np.zeros((40, 60), np.uint8)
    pixels[:10, :10] = 255  # a bright corner, to see where the image went
    pixels[30:, 20:] = 90
    path = tmp_path / "sideways.png"
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation: 6 = rotate 90 clockwise to display, 8 = 270, 3 = 180
    Image.fromarray(pixels).save(path, exif=exif)
    upright = np.rot90(pixels, k=turns)  # numpy: positive k turns counterclockwise
    assert np.array_equal(load_gray(path, 10**6), upright)
    pre = Preprocessing(resize_size=40, crop_size=32, interpolation="nearest")
    plain = tmp_path / "upright.png"
    Image.fromarray(np.ascontiguousarray(upright)).save(plain)
    assert torch.equal(pre.load(path), pre.load(plain))
    with Image.open(path) as im:
        assert torch.equal(pre.load_image(im), pre.load(plain))
