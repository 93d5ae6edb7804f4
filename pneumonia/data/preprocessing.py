"""The preprocessing of one image: the single definition of how a file becomes the model's input.

The DataModule builds it from its arguments, the checkpoint stores it as a record, and
evaluate, predict, Grad-CAM and export read it back from there; nothing re-derives it from
defaults. Its fields' defaults are the project's defaults (``conf/data/chest_xray.yaml``
mirrors them; a test holds them equal).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF  # noqa: N812

from pneumonia.data.images import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_UPSCALE,
    RESAMPLING,
    RESIZE_MODES,
    BadImageError,
    check_size,
    gray_from_image,
    is_upscale_limit,
    load_resized,
    resize,
    resized_size,
    smallest_side,
)
from pneumonia.data.transforms import IMAGENET_MEAN, IMAGENET_STD, NormalizeCollate, eval_transforms
from pneumonia.errors import InputValueError

# Test-time augmentation (tta=true): small rotations, inside the +-10 degrees that training
# augments with. Never a horizontal mirror: a chest is not mirror-symmetric, and a model trained
# without flips has never seen a heart on the right.
TTA_DEGREES = (-5.0, 0.0, 5.0)


class PreprocessingError(InputValueError):
    """A preprocessing record that is missing, incomplete or not understood."""


@dataclass(frozen=True)
class Preprocessing:
    """File -> normalised float (3, crop, crop): decode, gray, resize, center crop, normalise.

    Args:
        resize_size: the shorter side after decoding (what the decoded-image cache stores), or
            the side of the square with ``resize_mode="square"``.
        crop_size: the square center crop the model sees.
        interpolation: Pillow filter of the resize (antialiased when it shrinks).
        mean, std: per-channel normalisation of the ``[0, 1]`` gray value repeated to 3
            channels (ImageNet's by default; the backbone's weights decide).
        max_pixels: larger images are refused as possible decompression bombs.
        resize_mode: ``shorter`` keeps the aspect ratio (the crop cuts the longer side);
            ``square`` stretches the whole image to a square, which is how the shared
            224 x 224 copies of the Kermany set were made: training on those and evaluating
            original files needs ``square`` so that both see the same geometry.
        max_upscale: images the resize would enlarge more than this along a side are refused
            (:func:`~pneumonia.data.images.check_size`; a 1 x 1 file is no X-ray).
    """

    resize_size: int = 256
    crop_size: int = 224
    interpolation: str = "bicubic"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    max_pixels: int = DEFAULT_MAX_PIXELS
    resize_mode: str = "shorter"
    max_upscale: float = DEFAULT_MAX_UPSCALE

    def __post_init__(self) -> None:
        if self.resize_mode not in RESIZE_MODES:
            raise InputValueError(
                f"data.resize_mode={self.resize_mode!r}; valid: {', '.join(RESIZE_MODES)}"
            )
        if min(self.crop_size, self.resize_size) < 1:
            raise InputValueError(
                f"data.crop_size={self.crop_size} and data.resize_size={self.resize_size} must "
                "be at least 1"
            )
        if self.crop_size > self.resize_size:
            raise InputValueError(
                f"data.crop_size={self.crop_size} must not exceed "
                f"data.resize_size={self.resize_size}"
            )
        if self.interpolation not in RESAMPLING:
            raise InputValueError(
                f"data.interpolation={self.interpolation!r}; valid: {', '.join(RESAMPLING)}"
            )
        if not is_upscale_limit(self.max_upscale):
            raise InputValueError(
                f"data.max_upscale={self.max_upscale!r} must be a number >= 1 (how many times "
                "the resize may enlarge an image; 1: never)"
            )
        object.__setattr__(self, "max_upscale", float(self.max_upscale))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))

    # ------------------------------------------------------------------ records
    def to_dict(self) -> dict[str, Any]:
        """The record a checkpoint stores; its keys are also the DataModule's arguments."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, record: dict[str, Any] | None) -> Preprocessing:
        """The inverse of :meth:`to_dict`; every field must be present.

        Records written before ``resize_mode`` existed were all made with ``shorter``; those
        written before ``max_upscale`` existed (when images smaller than the crop were refused
        instead) get today's default rule.
        """
        names = {f.name for f in fields(cls)}
        older = {"resize_mode": "shorter", "max_upscale": DEFAULT_MAX_UPSCALE}
        if isinstance(record, dict):
            record = {**{k: v for k, v in older.items() if k not in record}, **record}
        if not isinstance(record, dict) or set(record) != names:
            found = sorted(record) if isinstance(record, dict) else record
            raise PreprocessingError(
                f"a preprocessing record needs exactly the fields {sorted(names)}; found {found}"
            )
        return cls(**record)

    def decode_settings(self) -> dict[str, Any]:
        """What decides the decoded pixels and which files are refused (and so keys the
        decoded-image cache)."""
        return {
            "resize_size": self.resize_size,
            "resize_mode": self.resize_mode,
            "interpolation": self.interpolation,
            "max_pixels": self.max_pixels,
            "max_upscale": self.max_upscale,
        }

    def describe(self) -> dict[str, Any]:
        """Every step, in order, for a deployment that must reproduce the model's inputs."""
        return {
            "steps": [
                "decode; apply the EXIF orientation",
                f"refuse images whose shorter side is under "
                f"{smallest_side(self.resize_size, self.max_upscale)} px (the resize would "
                f"enlarge them more than {self.max_upscale:g}x)",
                "to 8-bit gray: Pillow convert('L') (ITU-R 601-2 luma) for colour images; "
                "16-bit and float images scaled by their bit depth, not clipped",
                f"resize the shorter side to {self.resize_size} px "
                f"({self.interpolation}, antialiased), keeping the aspect ratio"
                if self.resize_mode == "shorter"
                else f"resize the whole image to {self.resize_size} x {self.resize_size} px "
                f"({self.interpolation}, antialiased), not keeping the aspect ratio",
                f"center crop {self.crop_size} x {self.crop_size}",
                "scale to [0, 1] (uint8 / 255) and repeat the gray channel to 3 channels",
                "subtract mean, divide by std, per channel",
            ],
            **self.to_dict(),
            "channels": 3,
            "layout": "NCHW float32",
        }

    def normalized(self, gray: float) -> list[float]:
        """A gray level in [0, 1] as the model sees it, per channel."""
        return [(gray - m) / s for m, s in zip(self.mean, self.std, strict=True)]

    def crop_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """(left, top, right, bottom) of the region the model sees, in the original image's
        pixels: the center crop, mapped back through the resize."""
        new_w, new_h = resized_size(width, height, self.resize_size, self.resize_mode)
        # torchvision's CenterCrop: the offset rounded, as eval_transform crops.
        left = int(round((new_w - self.crop_size) / 2.0))
        top = int(round((new_h - self.crop_size) / 2.0))
        sx, sy = width / new_w, height / new_h
        return left * sx, top * sy, (left + self.crop_size) * sx, (top + self.crop_size) * sy

    # ------------------------------------------------------------------ applying it
    def decode(self, path: Path) -> np.ndarray:
        """One file -> (H, W) uint8 gray at ``resize_size`` (see ``resize_mode``)."""
        return load_resized(
            path,
            self.resize_size,
            max_pixels=self.max_pixels,
            interpolation=self.interpolation,
            mode=self.resize_mode,
            max_upscale=self.max_upscale,
        )

    @cached_property
    def eval_transform(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return eval_transforms(crop_size=self.crop_size)

    @cached_property
    def collate(self) -> NormalizeCollate:
        """Stacks uint8 samples into the normalised float (B, 3, crop, crop) batch."""
        return NormalizeCollate(self.mean, self.std)

    @cached_property
    def tta_transform(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """A resized (1, H, W) uint8 image -> its (V, 1, crop, crop) views for ``tta``: the
        image turned by each of :data:`TTA_DEGREES`, then center-cropped.

        Turned before the crop, so that the corners a rotation uncovers stay outside the
        model's view where the resize leaves a margin (a 5 degree turn of a 108 px square moves
        its corners by about 5 px; the 96 px crop leaves 6). Turning the crop instead put
        black corners into every view: on a validation split, NORMAL images' probabilities
        rose by 40% in those views (benchmarks/RESULTS.md).
        """
        crop = self.eval_transform

        def views(image: torch.Tensor) -> torch.Tensor:
            turned = [
                image if d == 0 else TF.rotate(image, d, interpolation=InterpolationMode.BILINEAR)
                for d in TTA_DEGREES
            ]
            return torch.stack([crop(t).as_subclass(torch.Tensor) for t in turned])

        return views

    def load(self, path: Path, *, tta: bool = False) -> torch.Tensor:
        """One file -> uint8 (1, crop, crop), exactly as the evaluation DataLoader gives it
        (with ``tta``, its (V, 1, crop, crop) views)."""
        image = as_image(self.decode(path))
        return self.tta_transform(image) if tta else self.eval_transform(image)

    def load_image(self, im: Image.Image, *, tta: bool = False) -> torch.Tensor:
        """An opened Pillow image -> uint8 (1, crop, crop), as :meth:`load` makes files."""
        w, h = im.size
        if w * h > self.max_pixels:
            raise BadImageError(f"{w}x{h} pixels is above the limit of {self.max_pixels:,}")
        return self.load_gray(gray_from_image(im), tta=tta)

    def load_gray(self, gray: np.ndarray, *, tta: bool = False) -> torch.Tensor:
        """A decoded (H, W) uint8 gray image (``images.load_gray`` of a file or its bytes) ->
        uint8 (1, crop, crop), as :meth:`load` makes its file: the same size check and resize.
        """
        h, w = gray.shape
        check_size(w, h, size=self.resize_size, mode=self.resize_mode, max_upscale=self.max_upscale)
        image = as_image(resize(gray, self.resize_size, self.interpolation, self.resize_mode))
        return self.tta_transform(image) if tta else self.eval_transform(image)


def as_image(pixels: np.ndarray) -> tv_tensors.Image:
    return tv_tensors.Image(torch.from_numpy(pixels).unsqueeze(0))  # (H, W) -> (1, H, W)
