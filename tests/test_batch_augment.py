"""The batch augmentation for the training device draws the same distribution as the per-image
augmentation (torchvision v2 on each image), checked on CPU tensors with two-sample
Kolmogorov-Smirnov tests on what the augmentation changes; and the test can tell a different
distribution apart."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import ks_2samp
from torchvision import tv_tensors

from pneumonia.data.batch_augment import BatchAugment, PaddedCollate
from pneumonia.data.transforms import Augmentation, NormalizeCollate, train_transforms

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
CROP = 48
DRAWS = 1200
FULL = {"hflip_prob": 0.5, "rotation_degrees": 10.0, "translate": 0.06, "brightness": 0.2,
        "contrast": 0.2, "gamma": 0.3, "blur_prob": 0.5, "noise_std": 0.03}  # fmt: skip


def _sources() -> list[torch.Tensor]:
    """Three images of different sizes with structure that every change shows in: a left-right
    gradient (flips), a bright off-centre blob (crops, turns, shifts) and fine stripes (blur)."""
    images = []
    for h, w in ((60, 80), (64, 64), (72, 56)):
        y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        base = 40 + 120 * x / w + 30 * ((x // 2) % 2)
        blob = 90 * torch.exp(-(((x - 0.7 * w) ** 2 + (y - 0.35 * h) ** 2) / (0.02 * h * w)))
        images.append((base + blob).clamp(0, 255).to(torch.uint8)[None])
    return images


def _stats(batch: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per image: what crops, turns, flips, jitter, blur and noise move."""
    x = batch[:, 0]  # one channel (all three are equal)
    n, h, w = x.shape
    weights = x - x.amin(dim=(1, 2), keepdim=True)
    total = weights.sum(dim=(1, 2)).clamp_min(1e-6)
    cols, rows = torch.arange(w, dtype=x.dtype), torch.arange(h, dtype=x.dtype)
    return {
        "mean": x.mean(dim=(1, 2)),
        "std": x.std(dim=(1, 2)),
        "centre_x": (weights.sum(1) * cols).sum(1) / total,
        "centre_y": (weights.sum(2) * rows).sum(1) / total,
        "black": (x <= x.amin() + 1e-6).float().mean(dim=(1, 2)),
        "stripes": (x[:, :, 1:] - x[:, :, :-1]).abs().mean(dim=(1, 2)),
        "middle": x[:, h // 2, w // 2],
    }


def _per_image(crop: str, params: dict) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    transform = train_transforms(Augmentation(crop_size=CROP, crop=crop, **_settings(params)))
    sources = _sources()
    collate = NormalizeCollate(MEAN, STD)
    samples = [(transform(tv_tensors.Image(sources[i % 3])), 0) for i in range(DRAWS)]
    return _stats(collate(samples)[0])


def _batched(crop: str, params: dict) -> dict[str, torch.Tensor]:
    augmentation = Augmentation(crop_size=CROP, crop=crop, **_settings(params))
    augment = BatchAugment(augmentation, mean=MEAN, std=STD)
    sources = _sources()
    images, sizes, _ = PaddedCollate()([(sources[i % 3], 0) for i in range(DRAWS)])
    return _stats(augment(images, sizes, torch.Generator().manual_seed(1)))


def _settings(params: dict) -> dict:
    """``params``, the geometry off where they do not name it."""
    return {"hflip_prob": 0.0, "rotation_degrees": 0.0, "translate": 0.0, **params}


@pytest.mark.parametrize(
    ("crop", "params"),
    [("random", FULL), ("random_resized", FULL), ("center", {})],
    ids=["random_crop_all_changes", "random_resized_crop_all_changes", "centre_crop_only"],
)
def test_the_batch_augmentation_draws_the_per_image_distribution(crop: str, params: dict):
    one, batch = _per_image(crop, params), _batched(crop, params)
    for name in one:
        if crop == "center" and not params:  # deterministic: the very same images
            assert torch.allclose(one[name], batch[name], atol=2e-3), name
            continue
        p = ks_2samp(one[name].numpy(), batch[name].numpy()).pvalue
        assert p > 1e-3, f"{name}: the two augmentations differ (KS p = {p:.2g})"


def test_the_check_tells_a_different_augmentation_apart() -> None:
    """The same comparison, with the batch path turning up to 25 degrees instead of 10 and
    without its blur: a test that passed anything would pass this too."""
    one = _per_image("random", FULL)
    other = _batched("random", {**FULL, "rotation_degrees": 25.0, "blur_prob": 0.0})
    worst = min(ks_2samp(one[k].numpy(), other[k].numpy()).pvalue for k in one)
    assert worst < 1e-6


def test_padded_batches_keep_each_images_size() -> None:
    images, sizes, labels = PaddedCollate()([(s, i) for i, s in enumerate(_sources())])
    assert images.shape == (3, 1, 72, 80)
    assert sizes.tolist() == [[60, 80], [64, 64], [72, 56]]
    assert labels.tolist() == [0, 1, 2]
    assert int(images[2, 0, :, 56:].max()) == 0  # padding, never drawn from


def test_augment_on_device_hands_padded_batches_over_and_augments_them_after_transfer(
    tiny_root, tmp_path
) -> None:
    from pneumonia.data import ChestXRayDataModule

    dm = ChestXRayDataModule(root=tiny_root, cache_dir=tmp_path / "cache", batch_size=4,
                             resize_size=40, crop_size=32, num_workers=0, augment_on="device",
                             crop="random", augment={"brightness": 0.2})  # fmt: skip
    dm.setup("fit")
    images, sizes, labels = next(iter(dm.train_dataloader()))
    assert images.dtype == torch.uint8
    assert images.shape[:2] == (4, 1)
    assert (sizes.min(dim=1).values == 40).all()  # the decode-time resize: shorter side 40
    augmented, same_labels = dm.on_after_batch_transfer((images, sizes, labels), 0)
    assert augmented.shape == (4, 3, 32, 32)
    assert augmented.dtype == torch.float32
    assert torch.equal(same_labels, labels)
    val = next(iter(dm.val_dataloader()))  # evaluation: the per-image path, untouched
    assert dm.on_after_batch_transfer(val, 0) is val
    with pytest.raises(ValueError, match="augment_on must be loader .* or device"):
        ChestXRayDataModule(root=tiny_root, augment_on="gpu")


@pytest.mark.slow
def test_a_run_trains_with_augment_on_device(tmp_path, tiny_root) -> None:
    import math

    from pneumonia.train import train
    from tests.conftest import compose_train_cfg

    cfg = compose_train_cfg(tmp_path, tiny_root, "data.augment_on=device", "data.crop=random",
                            "trainer.limit_train_batches=2", "test=false", "checks.enabled=false",
                            "shift.enabled=false")  # fmt: skip
    metrics = train(cfg)
    assert math.isfinite(metrics["val/loss"])
    assert metrics["val/num_samples"] > 0
