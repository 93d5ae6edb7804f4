"""Train and eval transforms (torchvision.transforms.v2) on one-channel uint8 images.

Images arrive already resized so their shorter side is ``resize_size`` (see ``images.py``; the
cache stores them that way). Geometry runs on uint8 with one channel, which is 12x less memory
traffic than float RGB; :class:`NormalizeCollate` then turns the batch into float, repeats the
gray channel for 3-channel backbones and applies the ImageNet normalisation once per batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def train_transforms(
    *,
    crop_size: int = 224,
    crop: Literal["center", "random"] = "center",
    hflip_prob: float = 0.0,
    rotation_degrees: float = 10.0,
    translate: float = 0.05,
) -> v2.Compose:
    """Crop, rotation +-10 degrees, translate 5%; a horizontal flip only when asked for.

    ``crop="center"`` matches the notebook (Resize(255) + CenterCrop(224)); ``"random"`` takes
    a random ``crop_size`` window instead. Set a probability or magnitude to 0 to drop a part.
    The notebook also flipped half the images; that is off by default because a chest is not
    mirror-symmetric (the heart sits on the left): ``hflip_prob=0.5`` restores it.
    """
    if crop not in ("center", "random"):
        raise ValueError(f"data.crop must be 'center' or 'random', got {crop!r}")
    parts: list[v2.Transform] = [
        v2.CenterCrop(crop_size) if crop == "center" else v2.RandomCrop(crop_size),
    ]
    if hflip_prob > 0:
        parts.append(v2.RandomHorizontalFlip(p=hflip_prob))
    if rotation_degrees > 0 or translate > 0:
        parts.append(
            v2.RandomAffine(
                degrees=rotation_degrees,
                translate=(translate, translate) if translate > 0 else None,
                interpolation=v2.InterpolationMode.BILINEAR,
            )
        )
    return v2.Compose(parts)


def eval_transforms(*, crop_size: int = 224) -> v2.Compose:
    """Deterministic: center crop only (the resize happened at decode time)."""
    return v2.Compose([v2.CenterCrop(crop_size)])


class NormalizeCollate:
    """Stack uint8 (1 or 3, H, W) samples into a normalised float (B, 3, H, W) batch."""

    def __init__(
        self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
    ) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, batch: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.stack(
            [img.as_subclass(torch.Tensor) for img, _ in batch]
        )  # (B, C, H, W) uint8
        labels = torch.tensor([label for _, label in batch], dtype=torch.long)
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)  # (B, 1, H, W) -> (B, 3, H, W), a view
        images = images.float().div_(255.0)
        images = (images - self.mean) / self.std
        return images, labels
