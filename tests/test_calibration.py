"""Calibration and prevalence shift, against a model whose truth is known.

Scores come from two Gaussians (NORMAL ~ N(-1, 1), PNEUMONIA ~ N(+1, 1)) so the exact posterior
at any prevalence has a closed form: logit = 2 * x + logit(prevalence).
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from pneumonia.data import ChestXRayDataModule
from pneumonia.decision.calibration import (
    brier,
    calibrate,
    em_prevalence,
    fit_temperature,
    logit,
    nll,
    shift_prevalence,
)
from pneumonia.models.classifier import PneumoniaClassifier


def gaussian_sample(n: int, prevalence: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    targets = (torch.rand(n, generator=g) < prevalence).long()
    x = torch.randn(n, generator=g, dtype=torch.float64) + (2.0 * targets - 1.0)
    return x, targets


def exact_posterior(x: torch.Tensor, prevalence: float) -> torch.Tensor:
    return torch.sigmoid(2.0 * x + logit(prevalence))


def test_fit_temperature_recovers_the_scale_of_overconfident_scores() -> None:
    x, targets = gaussian_sample(40_000, 0.5)
    scores = 3.0 * (2.0 * x)  # the true logit, 3x overconfident
    temperature = fit_temperature(scores, targets)
    assert temperature == pytest.approx(3.0, rel=0.05)
    calibrated = calibrate(scores, temperature=temperature)
    assert nll(calibrated, targets) < nll(torch.sigmoid(scores), targets) - 0.1


def test_fit_temperature_accounts_for_the_prevalence_offset() -> None:
    # Scores trained for a balanced prior, validated on a 75% PNEUMONIA split: with the offset
    # the fit finds T = 1; ignoring it, T would absorb the prior mismatch.
    x, targets = gaussian_sample(40_000, 0.75, seed=1)
    scores = 2.0 * x
    assert fit_temperature(scores, targets, offset=logit(0.75)) == pytest.approx(1.0, rel=0.05)


def test_a_separable_split_hits_the_temperature_bound_instead_of_zero() -> None:
    scores = torch.tensor([-3.0, -2.0, 2.0, 3.0])
    targets = torch.tensor([0, 0, 1, 1])
    assert fit_temperature(scores, targets, bounds=(0.1, 10.0)) == pytest.approx(0.1, rel=0.01)
    assert fit_temperature(scores, torch.ones(4, dtype=torch.long)) == 1.0  # one class


def test_shift_prevalence_gives_the_exact_posterior_of_the_new_population() -> None:
    x, _ = gaussian_sample(1000, 0.5)
    at_half = exact_posterior(x, 0.5)
    for target in (0.1, 0.625, 0.9):
        torch.testing.assert_close(
            shift_prevalence(at_half, 0.5, target), exact_posterior(x, target)
        )
    assert calibrate(2.0 * x, prevalence=0.625).double() == pytest.approx(
        exact_posterior(x, 0.625), abs=1e-5
    )


@pytest.mark.parametrize("true_prevalence", [0.2, 0.625, 0.9])
def test_em_recovers_the_prevalence_of_unlabelled_images(true_prevalence: float) -> None:
    x, targets = gaussian_sample(20_000, true_prevalence, seed=3)
    probs = exact_posterior(x, 0.5)  # calibrated for a balanced population
    estimate, iterations, converged = em_prevalence(probs, 0.5)
    assert estimate == pytest.approx(targets.float().mean().item(), abs=0.02)
    assert 1 < iterations < 1000
    assert converged
    _, capped, converged = em_prevalence(probs, 0.5, max_iterations=2)
    assert (capped, converged) == (2, False)  # said, not hidden
    # The naive estimate (mean probability) is pulled towards 0.5; EM is not.
    naive = probs.mean().item()
    assert abs(estimate - true_prevalence) < abs(naive - true_prevalence)


def test_proper_scores_rank_the_true_posterior_above_a_sharper_one() -> None:
    x, targets = gaussian_sample(20_000, 0.5, seed=4)
    true, sharp = exact_posterior(x, 0.5), torch.sigmoid(6.0 * x)
    assert nll(true, targets) < nll(sharp, targets)
    assert brier(true, targets) < brier(sharp, targets)
    assert math.isnan(nll(torch.zeros(0), torch.zeros(0)))


def test_invalid_prevalence_and_cost_are_refused() -> None:
    with pytest.raises(ValueError, match="prevalence"):
        PneumoniaClassifier(backbone="resnet18", weights=None, prevalence=1.0)
    with pytest.raises(ValueError, match="cost_ratio"):
        PneumoniaClassifier(backbone="resnet18", weights=None, cost_ratio=0)


# ----------------------------------------------------------------------------- in the model
def test_model_probability_is_temperature_and_prevalence_shifted_softmax() -> None:
    torch.manual_seed(0)
    model = PneumoniaClassifier(backbone="resnet18", weights=None, prevalence=0.8).eval()
    model.temperature.fill_(2.0)
    model.reference_logit.fill_(logit(0.3))
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        logits = model(images)
        z = logits[:, 1] - logits[:, 0]
        expected = torch.sigmoid(z / 2.0 + logit(0.8) - logit(0.3))
        torch.testing.assert_close(model.probabilities(images), expected)


@pytest.mark.parametrize("class_weighted", [True, False])
def test_reference_prevalence_is_what_the_loss_saw(
    class_weighted: bool, tiny_root: Path, tmp_path: Path
) -> None:
    dm = ChestXRayDataModule(tiny_root, cache_dir=tmp_path, resize_size=40, crop_size=32)
    dm.setup("fit")
    model = PneumoniaClassifier(backbone="resnet18", weights=None, class_weighted=class_weighted)
    model._trainer = SimpleNamespace(datamodule=dm)
    model.setup("fit")
    normal, pneumonia = dm.split_counts("train")
    assert normal != pneumonia  # the fixture is imbalanced, so the two cases differ
    expected = 0.5 if class_weighted else pneumonia / (normal + pneumonia)
    assert torch.sigmoid(model.reference_logit).item() == pytest.approx(expected, abs=1e-6)


def test_validation_fits_the_temperature_and_logs_proper_scores() -> None:
    torch.manual_seed(0)
    model = PneumoniaClassifier(backbone="resnet18", weights=None)
    x, targets = gaussian_sample(4000, 0.75, seed=5)
    scores = (3.0 * 2.0 * x).float()  # 3x overconfident, balanced reference
    model.val_outputs["scores"].update(scores)
    model.val_outputs["targets"].update(targets)
    logged: dict[str, float] = {}
    model.log = lambda name, value, **_: logged.__setitem__(name, value)
    model._trainer = SimpleNamespace(sanity_checking=False)
    model.on_validation_epoch_end()
    assert float(model.temperature) == pytest.approx(3.0, rel=0.1)
    assert float(model.threshold) == 0.5  # bayes, cost ratio 1
    raw = torch.sigmoid(scores.double() + logit(targets.float().mean().item()))  # the split's
    assert logged["val/nll"] == pytest.approx(nll(raw, targets), rel=1e-4)
    assert logged["val/brier"] == pytest.approx(brier(raw, targets), rel=1e-4)
