"""Generalisation checks: the holdout folder's patients never train, degradations are real."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from pneumonia.data import ChestXRayDataModule
from pneumonia.data.patients import patient_id
from pneumonia.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from pneumonia.evaluation.generalisation import DEGRADATIONS, _gamma, degrade, summarise

from .conftest import compose_train_cfg

MEAN, STD = IMAGENET_MEAN, IMAGENET_STD


def gray_batch(n: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    """A normalised batch of gray images, as the collate makes them."""
    g = torch.Generator().manual_seed(seed)
    gray = torch.rand(n, 1, size, size, generator=g).expand(-1, 3, -1, -1)
    m, s = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return (gray - m) / s


def test_degrade_round_trips_the_normalisation_and_changes_the_pixels() -> None:
    images = gray_batch()
    same = degrade(images, _gamma(1.0), MEAN, STD, torch.Generator().manual_seed(0))
    torch.testing.assert_close(same, images, atol=1e-5, rtol=0)
    for name, degradation in DEGRADATIONS.items():
        out = degrade(images, degradation, MEAN, STD, torch.Generator().manual_seed(0))
        assert out.shape == images.shape, name
        assert (out - images).abs().mean() > 0.01, f"{name} leaves the images as they were"
        # Still one gray image repeated over the channels, inside the [0, 1] range.
        gray = out * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
        torch.testing.assert_close(gray[:, 0], gray[:, 2], atol=1e-5, rtol=0)
        assert gray.min() >= -1e-5
        assert gray.max() <= 1 + 1e-5


def test_noise_is_repeatable_from_its_seed() -> None:
    images = gray_batch()
    noise = DEGRADATIONS["noise_0.04"]
    a = degrade(images, noise, MEAN, STD, torch.Generator().manual_seed(1))
    b = degrade(images, noise, MEAN, STD, torch.Generator().manual_seed(1))
    c = degrade(images, noise, MEAN, STD, torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_summary_scores_at_the_splits_own_prevalence() -> None:
    targets = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1, 1])
    probs = torch.tensor([0.1, 0.4, 0.6, 0.3, 0.7, 0.8, 0.9, 0.9, 0.95])
    r = summarise(probs, targets, 0.5, 0.5, resamples=50)
    assert r["accuracy"] == pytest.approx(7 / 9)
    assert r["sensitivity"] == pytest.approx(5 / 6)
    assert r["specificity"] == pytest.approx(2 / 3)
    assert r["auroc_ci"][0] <= r["auroc"] <= r["auroc_ci"][1]
    # Probabilities for a balanced population, scored on a 2/3 PNEUMONIA split: the proper
    # scores use the probabilities shifted to the split's own prevalence.
    from pneumonia.decision.calibration import brier, nll, shift_prevalence

    at_own = shift_prevalence(probs, 0.5, 2 / 3)
    assert r["nll"] == pytest.approx(nll(at_own, targets))
    assert r["brier"] == pytest.approx(brier(at_own, targets))
    assert r["nll"] != pytest.approx(nll(probs, targets))
    assert summarise(probs[:3], targets[:3], 0.5, 0.5) == {"num_images": 3, "num_pneumonia": 0}


@pytest.fixture
def holdout(tiny_root: Path, tmp_path: Path) -> Path:
    """Two training patients' files copied into a holdout folder, plus a new patient."""
    root = tmp_path / "holdout"
    for cls in ("NORMAL", "PNEUMONIA"):
        (root / cls).mkdir(parents=True)
        first = sorted((tiny_root / "train" / cls).iterdir())[0]
        shutil.copy(first, root / cls / first.name)
    new = sorted((tiny_root / "test" / "NORMAL").iterdir())[0]
    shutil.copy(new, root / "NORMAL" / "IM-9999-0001.jpeg")
    return root


def test_holdout_patients_leave_training_and_validation(
    tiny_root: Path, holdout: Path, tmp_path: Path
) -> None:
    dm = ChestXRayDataModule(
        tiny_root, cache_dir=tmp_path / "c", resize_size=40, crop_size=32, holdout_root=holdout
    )
    dm.setup("fit")
    held = {patient_id(f) for f in dm.files("holdout")}
    assert len(dm.files("holdout")) == 3
    assert held.isdisjoint(dm.patients("train") | dm.patients("val"))
    plain = ChestXRayDataModule(tiny_root, cache_dir=tmp_path / "c", resize_size=40, crop_size=32)
    plain.setup("fit")
    before = len(plain.files("train")) + len(plain.files("val"))
    after = len(dm.files("train")) + len(dm.files("val"))
    overlap = sum(patient_id(f) in held for f in plain.files("train") + plain.files("val"))
    assert overlap >= 2  # the two copied training patients
    assert after == before - overlap
    assert "holdout" in dm.summary()
    images, labels = next(iter(dm.eval_dataloader("holdout")))  # read from the files
    assert images.shape[1:] == (3, 32, 32)
    assert sorted(labels.tolist()) == [0, 0, 1]


def test_training_reports_every_check_in_metrics_json(
    tmp_path: Path, tiny_root: Path, holdout: Path
) -> None:
    from pneumonia.decision.metrics import metrics_at
    from pneumonia.evaluation import score
    from pneumonia.models.checkpoint import load_checkpoint
    from pneumonia.train import train

    cfg = compose_train_cfg(tmp_path, tiny_root, f"data.holdout_root={holdout}")
    metrics = train(cfg)
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    checks = written["checks"]
    assert written["decision"]["threshold_rule"] == "bayes"
    assert written["decision"]["threshold"] == pytest.approx(0.5)
    # The clean validation check is the best checkpoint's own validation, scored again.
    val = checks["val"]
    assert val["num_images"] == metrics["val/num_samples"]
    assert val["auroc"] == pytest.approx(metrics["val/auroc"], abs=1e-5)
    assert val["accuracy"] == pytest.approx(metrics["val/accuracy"], abs=1e-5)  # both at 0.5
    # The holdout check is what evaluating the checkpoint on the holdout split gives.
    ckpt = load_checkpoint(metrics["best_model_path"])
    preds = score(ckpt, "holdout", device=torch.device("cpu"), precision="32-true")
    assert checks["holdout"]["num_images"] == len(preds.files) == 3
    at = metrics_at(preds.probs, preds.targets, preds.threshold)
    assert checks["holdout"]["accuracy"] == pytest.approx(at["accuracy"])
    assert checks["holdout"]["specificity"] == pytest.approx(at["specificity"])
    # Every degradation scored the whole validation split, and changed what the model saw.
    degraded = [checks[f"val_{k}"] for k in DEGRADATIONS]
    assert all(d["num_images"] == val["num_images"] for d in degraded)
    assert any(d["nll"] != pytest.approx(val["nll"], abs=1e-6) for d in degraded)
    mean = checks["val_degraded_mean"]
    assert mean["auroc"] == pytest.approx(sum(d["auroc"] for d in degraded) / len(degraded))


def test_a_bad_image_in_the_holdout_folder_is_named_or_skipped(
    tiny_root: Path, holdout: Path, tmp_path: Path
) -> None:
    from pneumonia.data import BadImagesError

    broken = holdout / "PNEUMONIA" / "person998_virus_1.jpeg"
    broken.write_bytes(b"")
    common = {"cache_dir": tmp_path / "c", "resize_size": 40, "crop_size": 32}
    with pytest.raises(BadImagesError, match=r"(?s)person998_virus_1\.jpeg: empty file"):
        ChestXRayDataModule(tiny_root, holdout_root=holdout, **common).setup("fit")
    dm = ChestXRayDataModule(tiny_root, holdout_root=holdout, on_bad_image="skip", **common)
    with pytest.warns(UserWarning, match="person998_virus_1"):
        dm.setup("fit")
    assert broken not in dm.files("holdout")
    assert len(dm.files("holdout")) == 3
    assert str(broken.resolve()) in dm.skipped  # counted in the summary's skipped files
    assert "skipped files: 1" in dm.summary()
