"""Training augmentation: the acquisition changes do what their names say, and only on request."""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from pneumonia.data.transforms import Augmentation, RandomGamma, RandomNoise, train_transforms


def gray(value: int = 100, size: int = 48) -> tv_tensors.Image:
    return tv_tensors.Image(torch.full((1, size, size), value, dtype=torch.uint8))


def test_without_augmentation_options_only_the_crop_runs() -> None:
    t = train_transforms(Augmentation(crop_size=32, rotation_degrees=0, translate=0))
    assert [type(p) for p in t.transforms] == [v2.CenterCrop]
    out = t(gray())
    assert out.shape == (1, 32, 32)
    assert torch.all(out == 100)


def test_gamma_moves_gray_levels_both_ways_within_its_range() -> None:
    torch.manual_seed(0)
    t = RandomGamma(0.5)
    means = [t(gray(128)).float().mean().item() for _ in range(200)]
    assert min(means) < 120 < 136 < max(means)  # darker and brighter
    lo, hi = 255 * (128 / 255) ** 1.5, 255 * (128 / 255) ** (1 / 1.5)
    assert lo - 1 <= min(means)
    assert max(means) <= hi + 1


def test_noise_keeps_uint8_and_its_strength() -> None:
    torch.manual_seed(0)
    noise = RandomNoise(0.05)
    stds = []
    for _ in range(200):
        out = noise(gray(128, size=64))
        assert out.dtype == torch.uint8
        assert isinstance(out, tv_tensors.Image)
        stds.append((out.float() - 128).std().item())
    # Each image gets a strength uniform in [0, 0.05] (x 255 on the uint8 scale): the strongest
    # of 200 draws comes near the top, and the average near the middle.
    top = 0.05 * 255
    assert 0.9 * top <= max(stds) <= 1.05 * top
    assert 0.4 * top <= sum(stds) / len(stds) <= 0.6 * top
    assert min(stds) < 0.1 * top


def test_acquisition_changes_vary_the_image() -> None:
    torch.manual_seed(0)
    t = train_transforms(
        Augmentation(
            crop_size=32,
            crop="random_resized",
            rotation_degrees=0,
            translate=0,
            brightness=0.3,
            contrast=0.3,
            gamma=0.3,
            blur_prob=1.0,
            noise_std=0.02,
        )
    )
    kinds = {type(p).__name__ for p in t.transforms}
    assert {
        "RandomResizedCrop",
        "ColorJitter",
        "RandomGamma",
        "RandomApply",
        "RandomNoise",
    } <= kinds
    ramp = tv_tensors.Image(torch.arange(48).repeat(48, 1).mul(5).to(torch.uint8).unsqueeze(0))
    outs = [t(ramp).float() for _ in range(8)]
    assert all(o.shape == (1, 32, 32) for o in outs)
    assert len({round(o.mean().item(), 3) for o in outs}) == 8


def test_an_unknown_crop_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="random_resized"):
        Augmentation(crop_size=32, crop="zoom")
    with pytest.raises(ValueError, match=r"data\.augment has no blur; its keys: crop_scale"):
        Augmentation.of({"blur": 0.5}, crop_size=32)  # a typo of blur_prob
