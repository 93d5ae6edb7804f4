"""Running a model: test-time augmentation that is deterministic, never mirrors a chest, and
turns the image before its crop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF  # noqa: N812

from pneumonia.data import Preprocessing
from pneumonia.data.preprocessing import TTA_DEGREES
from pneumonia.evaluation import score
from pneumonia.inference.runner import probabilities
from pneumonia.models.checkpoint import load_checkpoint

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
    from PIL import Image

    pre = Preprocessing(resize_size=72, crop_size=64)
    pixels = np.zeros((72, 72), np.uint8)
    pixels[:, :36] = 255  # a bright left half: the heart side of a chest X-ray
    views = pre.load_image(Image.fromarray(pixels), tta=True)
    assert views.shape == (len(TTA_DEGREES), 1, 64, 64)
    batch, _ = pre.collate([(views, 0)])  # (1, V, 3, 64, 64)
    model = LeftVersusRight()
    plain = model.probabilities(batch[:, TTA_DEGREES.index(0.0)])
    tta = probabilities(model, batch)
    mirror = model.probabilities(torch.flip(batch[:, TTA_DEGREES.index(0.0)], dims=[3]))
    assert ((plain + mirror) / 2).item() == pytest.approx(0.5)  # what the old mirrored TTA gave
    assert plain.item() > 0.8
    assert tta.item() == pytest.approx(plain.item(), abs=0.05)


def _shipped_sizes() -> list[tuple[str, int, int, str]]:
    """(experiment, resize_size, crop_size, resize_mode) of the defaults and every shipped
    experiment: the views each recipe's checkpoints will make."""
    from pneumonia.config import CONFIG_DIR, compose

    sizes = []
    for name in ["", *sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))]:
        data = compose("train", [f"experiment={name}"] if name else [], output_dir="unused").data
        sizes.append((name or "defaults", data.resize_size, data.crop_size, data.resize_mode))
    return sizes


@pytest.mark.parametrize(("experiment", "resize", "crop", "mode"), _shipped_sizes())
def test_tta_turns_the_image_before_its_crop_so_no_black_corner_enters_the_view(
    experiment: str, resize: int, crop: int, mode: str
) -> None:
    from PIL import Image

    pre = Preprocessing(resize_size=resize, crop_size=crop, resize_mode=mode)
    flat = Image.fromarray(np.full((300, 200), 200, np.uint8))  # bright everywhere
    views = pre.load_image(flat, tta=True)
    # Turned by 5 degrees, a 144 px square's corners move about 7 px: the 128 px crop keeps 8
    # (a 108 px square, 5 px: the 96 px crop keeps 6). Each recipe's sizes must keep that margin.
    assert views.min() >= 190, f"{experiment}: a {crop} px crop of {resize} px shows the corners"
    # Turning the crop itself (as TTA did before) blackens its corners.
    view = pre.load_image(flat)
    turned = TF.rotate(view, 5.0, interpolation=InterpolationMode.BILINEAR)
    assert turned.min() < 50


def test_tta_averages_the_views_of_the_files(trained: dict) -> None:
    ckpt = load_checkpoint(trained["ckpt"])
    plain = score(ckpt, "test", **CPU)
    tta = score(ckpt, "test", tta=True, **CPU)
    assert torch.equal(tta.probs, score(ckpt, "test", tta=True, **CPU).probs)
    assert not torch.equal(tta.probs, plain.probs)
    torch.testing.assert_close(tta.shift, plain.shift)  # the shift score: of the plain image
    # Independently: each file's views, one at a time, averaged.
    pre = ckpt.preprocessing
    expected = []
    for f in plain.files:
        views, _ = pre.collate([(v, 0) for v in pre.load(f, tta=True)])  # (V, 3, H, W)
        with torch.no_grad():
            expected.append(ckpt.model.probabilities(views).mean())
    torch.testing.assert_close(tta.probs, torch.stack(expected), atol=1e-5, rtol=0)


def test_autocast_follows_the_resolved_precision() -> None:
    from pneumonia.inference.runner import autocast

    cpu = torch.device("cpu")
    with autocast(cpu, "bf16-mixed"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with autocast(cpu, "32-true"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    with pytest.raises(ValueError, match="precision='64'"):
        autocast(cpu, "64")
