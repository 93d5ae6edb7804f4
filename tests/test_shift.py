"""Shift scores: what training looked like, stored with the checkpoint, and images unlike it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pneumonia.decision.shift import (
    METHODS,
    ShiftReference,
    reference_from_features,
    separation_auroc,
)


def two_gaussians(n: int, shift: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of two classes, as a CNN's penultimate ones are: non-negative, and living in
    a few of their dimensions (here the first 8 of 16), the classes apart along the first.
    ``shift`` moves weight into the other 8 dimensions (another scanner, another anatomy)."""
    g = torch.Generator().manual_seed(seed)
    targets = (torch.rand(n, generator=g) < 0.5).long()
    features = torch.randn(n, 16, generator=g).abs() * 0.3
    features[:, :8] += 1.0
    features[:, 0] += 1.5 * targets
    features[:, 8:] += shift
    return features, targets


def logits_of(features: torch.Tensor) -> torch.Tensor:
    """A linear head that is sure of itself near the training data only."""
    return (
        torch.stack([-features[:, 0], features[:, 0]], dim=1)
        * 3
        / (1 + features.norm(dim=1, keepdim=True) / 4)
    )


@pytest.mark.parametrize("method", ["mahalanobis", "knn"])
def test_the_score_separates_shifted_features_and_flags_the_stated_share(method: str) -> None:
    train, targets = two_gaussians(2000, 0.0, seed=0)
    val, _ = two_gaussians(500, 0.0, seed=1)
    reference = reference_from_features(method, train, targets, val, logits_of(val), flag_rate=0.05)
    inside, _ = two_gaussians(1000, 0.0, seed=2)
    outside, _ = two_gaussians(1000, 1.5, seed=3)  # another scanner: everything moved
    s_in = reference.score(inside, logits_of(inside))
    s_out = reference.score(outside, logits_of(outside))
    auroc = separation_auroc(s_in, s_out)
    assert auroc > 0.95
    flagged_inside = (~reference.in_distribution(s_in)).float().mean().item()
    assert flagged_inside == pytest.approx(0.05, abs=0.03)  # the rate set on validation holds
    assert (~reference.in_distribution(s_out)).float().mean().item() > 0.8


def test_a_reference_round_trips_through_its_record() -> None:
    train, targets = two_gaussians(300, 0.0, seed=0)
    for method in METHODS:
        reference = reference_from_features(
            method, train, targets, train[:100], logits_of(train[:100])
        )
        again = ShiftReference.from_record(reference.to_record())
        x = train[:7]
        torch.testing.assert_close(again.score(x, logits_of(x)), reference.score(x, logits_of(x)))
        assert again.describe() == reference.describe()
    assert ShiftReference.from_record(None) is None


def test_an_unknown_method_or_rate_is_refused() -> None:
    train, targets = two_gaussians(50, 0.0, seed=0)
    with pytest.raises(ValueError, match="shift.method='odin'"):
        reference_from_features("odin", train, targets, train, logits_of(train))
    with pytest.raises(ValueError, match="shift.flag_rate=1.5"):
        reference_from_features("knn", train, targets, train, logits_of(train), flag_rate=1.5)


# ----------------------------------------------------------------------------- with a model
def test_training_stores_the_reference_and_its_threshold_in_the_checkpoint(trained: dict):
    from pneumonia.models.checkpoint import load_checkpoint

    ckpt = load_checkpoint(trained["ckpt"])
    assert ckpt.shift is not None
    recorded = trained["metrics"]["shift"]
    assert recorded == ckpt.shift.describe()
    assert recorded["method"] == "mahalanobis"
    assert recorded["flag_rate"] == 0.05
    assert set(ckpt.shift.tensors) == {"means", "precision"}
    assert ckpt.shift.tensors["precision"].shape == (512, 512)  # resnet18's features


def test_synthetic_x_rays_are_in_distribution_and_photographs_are_not(
    trained: dict, tmp_path: Path
) -> None:
    """The tiny run's model was trained on synthetic chest images; photographs (scikit-image
    ships a few) and an inverted X-ray look like none of them."""
    skimage_data = pytest.importorskip("skimage.data")
    import pneumonia

    clf = pneumonia.load(trained["ckpt"], device="cpu", precision="32-true")
    xrays = sorted((trained["root"] / "test").rglob("*.jpeg"))
    photos = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins"):
        Image.fromarray(getattr(skimage_data, name)()).save(tmp_path / f"{name}.png")
        photos.append(tmp_path / f"{name}.png")
    inverted = tmp_path / "inverted.png"
    with Image.open(xrays[0]) as im:
        Image.fromarray(255 - np.asarray(im.convert("L"))).save(inverted)
    table = clf.predict([*xrays, *photos, inverted])
    inside = dict(zip(table["file"], table["in_distribution"], strict=True))
    score = dict(zip(table["file"], table["shift_score"], strict=True))
    # A reference from 20-odd tiny images, a threshold from 7: most X-rays pass, not all.
    assert sum(inside[str(f)] for f in xrays) >= 2 / 3 * len(xrays)
    assert not any(inside[str(f)] for f in [*photos, inverted])
    # Every photograph scores above every X-ray: the order, not just the threshold, is right.
    assert min(score[str(f)] for f in photos) > max(score[str(f)] for f in xrays)


def test_the_warning_fires_above_the_stated_share(caplog: pytest.LogCaptureFixture) -> None:
    from pneumonia.decision.prior_shift import WARN_SHARE, warn_if_unlike_training

    caplog.set_level("INFO")
    reference = ShiftReference("energy", threshold=1.0, flag_rate=0.05)
    warn_if_unlike_training(int(WARN_SHARE * 100), 100, reference)  # at the share: no warning
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    assert "flagged as unlike the training images" in caplog.text
    warn_if_unlike_training(int(WARN_SHARE * 100) + 1, 100, reference)
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "do not look like the images this model was trained on" in warning


def test_the_separation_auroc_is_the_mann_whitney_probability() -> None:
    inside = torch.tensor([1.0, 2.0, 3.0])
    outside = torch.tensor([2.0, 10.0, 20.0, 30.0])
    # pairs (out > in): 2 beats 1; 10, 20, 30 beat all three; 2 ties 2 (half)
    assert separation_auroc(inside, outside) == pytest.approx((1 + 9 + 0.5) / 12)
    assert separation_auroc(inside, inside + 100) == 1.0  # scores far beyond [0, 1] work


def test_em_is_refused_on_a_folder_of_mostly_flagged_images(trained: dict, tmp_path: Path):
    skimage_data = pytest.importorskip("skimage.data")
    from pneumonia.inference.runner import predict_files
    from pneumonia.models.checkpoint import load_checkpoint

    photos = []
    for k, name in enumerate(("astronaut", "coffee", "chelsea", "rocket", "camera", "coins") * 6):
        Image.fromarray(getattr(skimage_data, name)()).save(tmp_path / f"{k}_{name}.png")
        photos.append(tmp_path / f"{k}_{name}.png")
    ckpt = load_checkpoint(trained["ckpt"])
    cpu = {"device": torch.device("cpu"), "precision": "32-true"}
    with pytest.raises(ValueError, match=r"only their proportions changed.*100% of these images"):
        predict_files(ckpt, photos, prior_shift="em", **cpu)
    rows = predict_files(ckpt, photos, **cpu)  # without EM: scored, and every one flagged
    assert not any(r["in_distribution"] for r in rows)


def test_the_score_is_computed_in_float32_under_bf16_autocast() -> None:
    train, targets = two_gaussians(300, 0.0, seed=0)
    reference = reference_from_features("mahalanobis", train, targets, train, logits_of(train))
    x = train[:20] * 7  # far out: large scores, where bf16 would round them coarsely
    expected = reference.score(x, logits_of(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = reference.score(x, logits_of(x))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected)
