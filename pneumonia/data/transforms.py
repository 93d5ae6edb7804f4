"""Train and eval transforms (torchvision.transforms.v2) on one-channel uint8 images.

Images arrive already resized at decode time, as the preprocessing's ``resize_mode`` says
(``images.resize``; the cache stores them that way). Geometry runs on uint8 with one channel,
which is 12x less memory traffic than float RGB; :class:`NormalizeCollate` then turns the batch
into float, repeats the gray channel for 3-channel backbones and applies the preprocessing's
mean/std once per batch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from pneumonia.errors import InputValueError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class RandomGamma(v2.Transform):
    """``pixel ** gamma`` with ``log(gamma)`` uniform in ``+-log(1 + strength)``: exposure and
    detector response curves differ between scanners more than linear brightness does."""

    def __init__(self, strength: float) -> None:
        super().__init__()
        self.log_range = math.log1p(strength)

    def make_params(self, flat_inputs: list) -> dict:
        u = float(torch.empty(()).uniform_(-self.log_range, self.log_range))
        return {"gamma": math.exp(u)}

    def transform(self, inpt, params: dict):
        return v2.functional.adjust_gamma(inpt, params["gamma"])


class RandomNoise(v2.Transform):
    """Additive Gaussian noise of a random strength up to ``std`` (on the [0, 1] scale)."""

    def __init__(self, std: float) -> None:
        super().__init__()
        self.std = std

    def make_params(self, flat_inputs: list) -> dict:
        return {"std": float(torch.empty(()).uniform_(0, self.std))}

    def transform(self, inpt, params: dict):
        noisy = inpt.float() + torch.randn(inpt.shape) * (params["std"] * 255)
        return tv_tensors.wrap(noisy.round_().clamp_(0, 255).to(inpt.dtype), like=inpt)


CROPS = ("center", "random", "random_resized")
# The Augmentation fields the DataModule takes as its own arguments (data.crop ...); the others
# are the acquisition changes under data.augment.
GEOMETRY = ("crop_size", "crop", "hflip_prob", "rotation_degrees", "translate")


@dataclass(frozen=True)
class Augmentation:
    """The training augmentation's settings, named and defaulted once: the per-image path
    (:func:`train_transforms`) and the device path
    (:class:`~pneumonia.data.batch_augment.BatchAugment`) both take this object, so neither
    can drift from the other; ``conf/data/chest_xray.yaml`` mirrors the defaults (a test holds
    them equal).

    ``crop="center"`` matches the notebook (Resize(255) + CenterCrop(224)); ``"random"`` takes
    a random ``crop_size`` window instead; ``"random_resized"`` a random window of
    ``crop_scale``..1 of the area and aspect 3/4..4/3, resized to ``crop_size`` (field of view
    and proportions vary between acquisitions). Then a random rotation of up to
    ``rotation_degrees`` and translation of up to ``translate``; a horizontal flip only when
    asked for (``hflip_prob``): a chest is not mirror-symmetric (the heart sits on the left),
    though the notebook flipped half the images.

    Acquisition changes, all off by default: ``brightness`` and ``contrast`` (ColorJitter
    factors), ``gamma`` (see :class:`RandomGamma`), ``blur_prob`` (a Gaussian blur of sigma
    0.1-1.5 px) and ``noise_std`` (see :class:`RandomNoise`). A probability or magnitude of 0
    drops a part.
    """

    crop_size: int
    crop: str = "center"
    hflip_prob: float = 0.0
    rotation_degrees: float = 10.0
    translate: float = 0.05
    crop_scale: float = 0.7
    brightness: float = 0.0
    contrast: float = 0.0
    gamma: float = 0.0
    blur_prob: float = 0.0
    noise_std: float = 0.0

    def __post_init__(self) -> None:
        if self.crop not in CROPS:
            raise InputValueError(f"data.crop must be one of {', '.join(CROPS)}, got {self.crop!r}")

    @classmethod
    def of(cls, augment: Mapping[str, float] | None = None, **geometry: Any) -> Augmentation:
        """The DataModule's arguments: the geometry, and ``augment`` (data.augment), whose
        keys must be acquisition changes.

        Raises:
            InputValueError: an unknown key of data.augment, the valid ones listed.
        """
        acquisition = [f.name for f in fields(cls) if f.name not in GEOMETRY]
        unknown = sorted(set(augment or {}) - set(acquisition))
        if unknown:
            raise InputValueError(
                f"data.augment has no {', '.join(unknown)}; its keys: {', '.join(acquisition)}"
            )
        return cls(**geometry, **(augment or {}))


def train_transforms(augmentation: Augmentation) -> v2.Compose:
    """The per-image training augmentation of ``augmentation``, on uint8 (1, H, W) images."""
    a = augmentation
    crops = {
        "center": lambda: v2.CenterCrop(a.crop_size),
        "random": lambda: v2.RandomCrop(a.crop_size),
        "random_resized": lambda: v2.RandomResizedCrop(a.crop_size, scale=(a.crop_scale, 1.0)),
    }
    parts: list[v2.Transform] = [crops[a.crop]()]
    if a.hflip_prob > 0:
        parts.append(v2.RandomHorizontalFlip(p=a.hflip_prob))
    if a.rotation_degrees > 0 or a.translate > 0:
        parts.append(
            v2.RandomAffine(
                degrees=a.rotation_degrees,
                translate=(a.translate, a.translate) if a.translate > 0 else None,
                interpolation=v2.InterpolationMode.BILINEAR,
            )
        )
    if a.brightness > 0 or a.contrast > 0:
        parts.append(v2.ColorJitter(brightness=a.brightness, contrast=a.contrast))
    if a.gamma > 0:
        parts.append(RandomGamma(a.gamma))
    if a.blur_prob > 0:
        parts.append(v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 1.5))], p=a.blur_prob))
    if a.noise_std > 0:
        parts.append(RandomNoise(a.noise_std))
    return v2.Compose(parts)


def eval_transforms(*, crop_size: int) -> v2.Compose:
    """Deterministic: center crop only (the resize happened at decode time)."""
    return v2.Compose([v2.CenterCrop(crop_size)])


class NormalizeCollate:
    """Stack uint8 (1 or 3, H, W) samples into a normalised float (B, 3, H, W) batch; samples
    of several views (V, 1, H, W) (test-time augmentation) into (B, V, 3, H, W)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)  # (3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, batch: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.stack([img.as_subclass(torch.Tensor) for img, _ in batch])  # uint8
        labels = torch.tensor([label for _, label in batch], dtype=torch.long)
        if images.shape[-3] == 1:  # (..., 1, H, W) -> (..., 3, H, W), a view
            images = images.expand(*images.shape[:-3], 3, *images.shape[-2:])
        images = images.float().div_(255.0)
        images = (images - self.mean) / self.std
        return images, labels
