"""Binary metrics and the decision threshold rules (f1, youden, sensitivity, fixed)."""

from __future__ import annotations

import pytest
import torch
from torchmetrics.functional.classification import binary_f1_score

from pneumonia.metrics import choose_threshold, confusion_matrix, metrics_at


def _scores(n: int = 400, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    targets = (torch.rand(n, generator=g) < 0.6).long()
    probs = (torch.rand(n, generator=g) * 0.7 + 0.3 * targets).clamp(0, 1)
    return probs, targets


GRID = torch.linspace(0, 1, 2001).tolist()


def test_f1_threshold_is_at_least_as_good_as_any_grid_point() -> None:
    probs, targets = _scores()
    t = choose_threshold(probs, targets, "f1")
    best_on_grid = max(binary_f1_score(probs, targets, threshold=x).item() for x in GRID)
    assert metrics_at(probs, targets, t)["f1"] >= best_on_grid - 1e-6


def test_youden_threshold_maximises_sensitivity_plus_specificity() -> None:
    probs, targets = _scores(seed=1)
    t = choose_threshold(probs, targets, "youden")

    def youden(x: float) -> float:
        m = metrics_at(probs, targets, x)
        return m["recall"] + m["specificity"] - 1

    assert youden(t) >= max(youden(x) for x in GRID[::4]) - 1e-6


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95, 1.0])
def test_sensitivity_threshold_reaches_the_target_with_the_best_specificity(target: float) -> None:
    probs, targets = _scores(seed=2)
    t = choose_threshold(probs, targets, "sensitivity", target_sensitivity=target)
    chosen = metrics_at(probs, targets, t)
    assert chosen["recall"] >= target
    reaching = [metrics_at(probs, targets, x) for x in GRID[::4]]
    best_spec = max(m["specificity"] for m in reaching if m["recall"] >= target)
    assert chosen["specificity"] >= best_spec - 1e-6


def test_fixed_threshold_and_single_class_fallback() -> None:
    probs, targets = _scores()
    assert choose_threshold(probs, targets, 0.3) == 0.3
    assert choose_threshold(probs, torch.ones_like(targets), "f1") == 0.5


def test_metrics_agree_with_the_confusion_matrix() -> None:
    probs, targets = _scores(seed=3)
    (tn, fp), (fn, tp) = confusion_matrix(probs, targets, 0.4).tolist()
    m = metrics_at(probs, targets, 0.4)
    assert m["accuracy"] == pytest.approx((tp + tn) / len(targets))
    assert m["recall"] == pytest.approx(tp / (tp + fn))
    assert m["specificity"] == pytest.approx(tn / (tn + fp))
    assert m["precision"] == pytest.approx(tp / (tp + fp))
    assert m["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
