"""The decision: the Bayes threshold, the tuned rules, the record, and the prior shift."""

from __future__ import annotations

import pytest
import torch
from torchmetrics.functional.classification import binary_f1_score

from pneumonia.decision.metrics import metrics_at
from pneumonia.decision.rules import Decision, bayes_threshold, choose_threshold

from .test_calibration import exact_posterior, gaussian_sample


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


@pytest.mark.parametrize("cost_ratio", [1.0, 4.0, 0.25])
def test_bayes_threshold_minimises_the_expected_cost(cost_ratio: float) -> None:
    x, targets = gaussian_sample(50_000, 0.625, seed=2)
    probs = exact_posterior(x, 0.625)

    def cost(t: float) -> float:
        predicted = probs > t
        missed = ((~predicted) & (targets == 1)).sum().item()
        false_alarm = (predicted & (targets == 0)).sum().item()
        return (cost_ratio * missed + false_alarm) / len(targets)

    best = min(cost(t / 100) for t in range(1, 100))
    assert bayes_threshold(cost_ratio) == pytest.approx(1 / (1 + cost_ratio))
    assert cost(bayes_threshold(cost_ratio)) <= best + 0.002
    assert choose_threshold(probs, targets, "bayes", cost_ratio=cost_ratio) == bayes_threshold(
        cost_ratio
    )


# ----------------------------------------------------------------------------- at inference
def bayes_decision(prevalence: float = 0.5, **changes) -> Decision:
    fields = {
        "threshold_rule": "bayes",
        "threshold": 0.5,
        "cost_ratio": 1.0,
        "prevalence": prevalence,
        "temperature": 1.0,
        "reference_prevalence": 0.5,
        "target_sensitivity": 0.95,
    }
    return Decision(**{**fields, **changes})


def test_the_report_names_the_rule_behind_the_threshold() -> None:
    decision = bayes_decision(cost_ratio=2.0, temperature=1.3, threshold=1 / 3)
    line = decision.describe({"estimated_prevalence": 0.71})
    assert "rule `bayes`" in line
    assert "0.333" in line
    assert "cost ratio 2" in line
    assert "0.710" in line
    assert "re-based" not in decision.describe()


def test_a_report_says_when_em_did_not_converge() -> None:
    shift = {"estimated_prevalence": 0.9, "iterations": 1000, "converged": False}
    assert "did not converge in 1000 iterations" in bayes_decision().describe(shift)
