"""Running a model: test-time augmentation that is deterministic and never mirrors a chest."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF  # noqa: N812

from pneumonia.checkpoint import load_checkpoint
from pneumonia.evaluation import score
from pneumonia.inference import TTA_DEGREES, probabilities

CPU = {"device": torch.device("cpu"), "precision": "32-true"}

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


class LeftVersusRight(nn.Module):
    """A 'model' whose PNEUMONIA probability is how much brighter the left half is."""

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        half = images.shape[-1] // 2
        left = images[..., :half].mean(dim=(1, 2, 3))
        right = images[..., half:].mean(dim=(1, 2, 3))
        return torch.sigmoid(4 * (left - right))


def test_tta_keeps_the_left_right_asymmetry_a_mirror_would_cancel() -> None:
    images = torch.zeros(1, 3, 64, 64)
    images[..., :32] = 1.0  # a bright left half: the heart side of a chest X-ray
    model = LeftVersusRight()
    plain = probabilities(model, images)
    tta = probabilities(model, images, tta=True, fill=[0.0, 0.0, 0.0])
    mirror_average = (plain + model.probabilities(torch.flip(images, dims=[3]))) / 2
    assert mirror_average.item() == pytest.approx(0.5)  # what the old mirrored TTA gave
    assert plain.item() > 0.8
    assert tta.item() == pytest.approx(plain.item(), abs=0.05)


def test_tta_needs_the_fill_of_the_checkpoint() -> None:
    with pytest.raises(ValueError, match="normalized"):
        probabilities(LeftVersusRight(), torch.zeros(1, 3, 8, 8), tta=True)


def test_tta_averages_small_rotations_of_the_unnormalised_image(trained: dict) -> None:
    ckpt = load_checkpoint(trained["ckpt"])
    plain = score(ckpt, "test", **CPU)
    tta = score(ckpt, "test", tta=True, **CPU)
    assert torch.equal(tta.probs, score(ckpt, "test", tta=True, **CPU).probs)
    assert not torch.equal(tta.probs, plain.probs)
    # Independently: rotate the [0, 1] image with black (zero) corners, then normalise;
    # average over the angles.
    pre = ckpt.preprocessing
    gray = torch.stack([pre.load(f) for f in plain.files]).float() / 255  # (B, 1, H, W)
    mean = torch.tensor(pre.mean).view(1, 3, 1, 1)
    std = torch.tensor(pre.std).view(1, 3, 1, 1)
    probs = []
    for degrees in TTA_DEGREES:
        view = TF.rotate(gray, degrees, interpolation=InterpolationMode.BILINEAR)
        with torch.no_grad():
            probs.append(ckpt.model.probabilities((view.expand(-1, 3, -1, -1) - mean) / std))
    torch.testing.assert_close(tta.probs, torch.stack(probs).mean(dim=0), atol=1e-5, rtol=0)


def test_autocast_follows_the_resolved_precision() -> None:
    from pneumonia.inference import autocast

    cpu = torch.device("cpu")
    with autocast(cpu, "bf16-mixed"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with autocast(cpu, "32-true"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    with pytest.raises(ValueError, match="precision='64'"):
        autocast(cpu, "64")
