"""Running a trained classifier: devices, precision, test-time augmentation, preprocessing.

Shared by ``evaluate``, ``predict``, ``export`` and the notebooks, so every path applies the
exact preprocessing the model was trained with (recorded in its checkpoint).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from pneumonia.data.images import DEFAULT_MAX_PIXELS
from pneumonia.data.transforms import IMAGENET_MEAN, IMAGENET_STD, NormalizeCollate, eval_transforms


def resolve_device(accelerator: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present; ``gpu``/``cuda`` and ``cpu`` are taken literally."""
    if accelerator == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if accelerator in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError("accelerator=gpu but no CUDA device is visible; use accelerator=cpu")
        return torch.device("cuda")
    if accelerator == "cpu":
        return torch.device("cpu")
    raise ValueError(f"accelerator={accelerator!r}: use auto, cpu or gpu")


def autocast(device: torch.device, precision: str | int) -> contextlib.AbstractContextManager:
    """bf16 autocast for ``precision=bf16`` (or ``bf16-mixed``); fp32 otherwise."""
    if str(precision).startswith("bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if str(precision) not in ("32", "32-true"):
        raise ValueError(f"precision={precision!r}: use 32 or bf16")
    return contextlib.nullcontext()


@torch.inference_mode()
def pneumonia_probability(
    model: torch.nn.Module, images: torch.Tensor, *, tta: bool = False
) -> torch.Tensor:
    """(B, 3, H, W) normalised images -> (B,) PNEUMONIA probabilities.

    ``tta`` averages the probabilities of the image and its horizontal mirror: deterministic,
    never random.
    """
    probs = model.predict_proba(images).float()
    if tta:
        probs = (probs + model.predict_proba(torch.flip(images, dims=[3])).float()) / 2
    return probs


def predict_batches(
    model: torch.nn.Module,
    batches: Iterable[tuple[torch.Tensor, Any]],
    *,
    device: torch.device,
    precision: str | int = "32",
    tta: bool = False,
) -> tuple[torch.Tensor, list[Any]]:
    """Probabilities for every batch of ``(images, extra)``; ``extra`` is passed through."""
    model.to(device).eval()
    probs, extras = [], []
    for images, extra in batches:
        with autocast(device, precision):
            p = pneumonia_probability(model, images.to(device, non_blocking=True), tta=tta)
        probs.append(p.cpu())
        extras.extend(extra.tolist() if torch.is_tensor(extra) else extra)
    return (torch.cat(probs) if probs else torch.zeros(0)), extras


@dataclass(frozen=True)
class Preprocessing:
    """The eval-time preprocessing a checkpoint was trained with."""

    resize_size: int = 256
    crop_size: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    max_pixels: int = DEFAULT_MAX_PIXELS

    @classmethod
    def from_data_hparams(cls, hp: dict[str, Any]) -> Preprocessing:
        defaults = cls()
        return cls(
            resize_size=int(hp.get("resize_size", defaults.resize_size)),
            crop_size=int(hp.get("crop_size", defaults.crop_size)),
            mean=tuple(hp.get("mean", defaults.mean)),
            std=tuple(hp.get("std", defaults.std)),
            max_pixels=int(hp.get("max_pixels", defaults.max_pixels)),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "resize_shorter_side": self.resize_size,
            "center_crop": self.crop_size,
            "grayscale_repeated_to_channels": 3,
            "scale": "uint8 / 255",
            "mean": list(self.mean),
            "std": list(self.std),
            "layout": "NCHW float32",
        }

    @cached_property
    def _reader(self):
        from pneumonia.data import ChestXRayDataset

        transform = eval_transforms(crop_size=self.crop_size)
        return ChestXRayDataset(
            [], [], transform, resize_size=self.resize_size, max_pixels=self.max_pixels
        )

    def load(self, path: Path) -> torch.Tensor:
        """One file -> uint8 (1, crop, crop) tensor, by the eval DataLoader's own code."""
        return self._reader.load(path)

    def collate(self) -> NormalizeCollate:
        return NormalizeCollate(self.mean, self.std)
