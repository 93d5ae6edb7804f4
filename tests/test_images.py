"""Image decoding: every Pillow mode to the same gray, bit depths, bad files, the pixel limit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumonia.data.images import BadImageError, load_gray, load_resized

GRADIENT = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (48, 1))  # (48, 64) known gray levels


@pytest.mark.parametrize("mode", ["L", "RGB", "LA", "RGBA", "P"])
def test_every_common_mode_loads_as_the_same_gray(tmp_path: Path, mode: str) -> None:
    im = Image.fromarray(GRADIENT)
    if mode != "L":
        im = im.convert(mode)
    path = tmp_path / f"x_{mode}.png"
    im.save(path)
    gray = load_gray(path)
    assert gray.dtype == np.uint8
    assert gray.shape == GRADIENT.shape
    # RGB->L uses the ITU-R 601 weights and P may quantise: allow one gray level.
    assert np.abs(gray.astype(int) - GRADIENT.astype(int)).max() <= 1


def test_16_bit_png_is_scaled_by_bit_depth_not_clipped(tmp_path: Path) -> None:
    twelve_bit = (GRADIENT.astype(np.int64) * 4095 // 252).astype(np.uint16)  # 0..4095
    path = tmp_path / "dicom_export.png"
    Image.fromarray(twelve_bit).save(path)
    assert Image.open(path).mode.startswith("I")
    gray = load_gray(path)
    expected = np.floor(twelve_bit / 4095 * 255 + 0.5)
    assert np.abs(gray.astype(float) - expected).max() <= 1
    assert gray.max() == 255  # Pillow's convert("L") would have clipped most of it to 255
    assert (gray < 128).mean() > 0.3


def test_resize_makes_shorter_side_the_target(tmp_path: Path) -> None:
    path = tmp_path / "wide.png"
    Image.fromarray(np.zeros((50, 120), np.uint8)).save(path)
    pixels = load_resized(path, 25, max_pixels=10**6, interpolation="bicubic", mode="shorter")
    assert pixels.shape == (25, 60)


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"", "empty file"), (b"this is text", "not a readable image")],
)
def test_unreadable_files_raise_bad_image(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "bad.jpeg"
    path.write_bytes(content)
    with pytest.raises(BadImageError, match=reason):
        load_gray(path)


def test_truncated_jpeg_raises_bad_image(tmp_path: Path) -> None:
    path = tmp_path / "cut.jpeg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])  # header intact, scan data cut
    with pytest.raises(BadImageError, match="cannot decode"):
        load_gray(path)


def test_pixel_limit_refuses_huge_images(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((100, 100), np.uint8)).save(path)
    with pytest.raises(BadImageError, match="decompression bomb"):
        load_gray(path, max_pixels=5_000)


def test_data_max_pixels_is_the_one_limit_above_pillows_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pillow refuses images above twice its MAX_IMAGE_PIXELS (about 179 MP by default) before
    # this project's limit is consulted. Scaled down: Pillow's limit 1,000 pixels, an image of
    # 10,000 (ten times it), data.max_pixels 20,000.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)
    path = tmp_path / "large.png"
    Image.fromarray(np.full((100, 100), 7, np.uint8)).save(path)
    assert load_gray(path, max_pixels=20_000).shape == (100, 100)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)
    with pytest.raises(BadImageError, match=r"data\.max_pixels"):
        load_gray(path, max_pixels=4_000)  # above twice the limit: Pillow's own error, renamed
    with pytest.raises(BadImageError, match=r"data\.max_pixels"):
        load_gray(path, max_pixels=6_000)  # between once and twice: this project's check


# ----------------------------------------------------------------------------- small images
# (resize_size, max_upscale) -> the smallest shorter side accepted, worked out by hand:
# ceil(resize_size / max_upscale), the side the resize enlarges exactly max_upscale times or less.
EDGES = {(256, 4.0): 64, (144, 4.0): 36, (72, 4.0): 18, (40, 4.0): 10, (256, 3.0): 86}


@pytest.mark.parametrize("mode", ["shorter", "square"])
@pytest.mark.parametrize(("size", "max_upscale"), list(EDGES))
def test_the_smallest_accepted_and_the_largest_refused_image(
    tmp_path: Path, mode: str, size: int, max_upscale: float
) -> None:
    """The rule judges what the resize does (the enlargement of the shorter side), not the
    stored size against the crop: an image narrower than the crop is accepted when the resize
    enlarges it little, whichever side is the short one."""
    from pneumonia.data import Preprocessing

    smallest = EDGES[(size, max_upscale)]
    pre = Preprocessing(resize_size=size, crop_size=size - 8, resize_mode=mode,
                        max_upscale=max_upscale)  # fmt: skip
    for long_side in (smallest, 3 * smallest + 1):
        for shape in ((smallest, long_side), (long_side, smallest)):  # (H, W): either side short
            accepted = tmp_path / f"ok_{shape[0]}x{shape[1]}.png"
            Image.fromarray(np.full(shape, 90, np.uint8)).save(accepted)
            assert min(pre.decode(accepted).shape) == size
            assert pre.load(accepted).shape == (1, size - 8, size - 8)
            with Image.open(accepted) as im:
                assert pre.load_image(im).shape == (1, size - 8, size - 8)  # the API's path
            short = tuple(smallest - 1 if s == smallest else s for s in shape)
            refused = tmp_path / f"small_{short[0]}x{short[1]}.png"
            Image.fromarray(np.full(short, 90, np.uint8)).save(refused)
            with pytest.raises(BadImageError, match=r"data\.max_upscale") as info:
                pre.decode(refused)
            assert f"at least {smallest} px" in str(info.value)
            with Image.open(refused) as im, pytest.raises(BadImageError, match="enlarge"):
                pre.load_image(im)


@pytest.mark.parametrize("mode", ["shorter", "square"])
def test_thumbnails_are_still_refused_and_the_message_says_what_to_change(
    tmp_path: Path, mode: str
) -> None:
    from pneumonia.data import Preprocessing

    pre = Preprocessing(resize_mode=mode)  # the defaults: 256, crop 224, 4x
    for side, times in ((1, "256x"), (8, "32x"), (32, "8.00x"), (63, "4.06x")):
        path = tmp_path / f"icon{side}.png"
        Image.fromarray(np.full((side, side), 128, np.uint8)).save(path)
        with pytest.raises(BadImageError) as info:
            pre.decode(path)
        message = str(info.value)
        assert f"{side}x{side} pixels" in message
        assert f"enlarge it {times}" in message
        assert "raise the limit: data.max_upscale=... to train, max_upscale=..." in message
    path = tmp_path / "icon8.png"
    assert Preprocessing(resize_mode=mode, max_upscale=32).decode(path).shape[0] == 256
    with pytest.raises(ValueError, match=r"data\.max_upscale=0\.5 must be a number >= 1"):
        Preprocessing(max_upscale=0.5)
