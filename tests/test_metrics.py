"""Binary metrics on the PNEUMONIA probability, against counts made by hand."""

from __future__ import annotations

import pytest
import torch

from pneumonia.decision.metrics import confusion_matrix, metrics_at


def _scores(n: int = 400, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    targets = (torch.rand(n, generator=g) < 0.6).long()
    probs = (torch.rand(n, generator=g) * 0.7 + 0.3 * targets).clamp(0, 1)
    return probs, targets


def counts_by_hand(probs: torch.Tensor, targets: torch.Tensor, threshold: float):
    """TN, FP, FN, TP counted in plain Python: PNEUMONIA (1) when the probability is above."""
    tn = fp = fn = tp = 0
    for p, t in zip(probs.tolist(), targets.tolist(), strict=True):
        predicted = p > threshold
        tp += predicted and t == 1
        fp += predicted and t == 0
        fn += not predicted and t == 1
        tn += not predicted and t == 0
    return tn, fp, fn, tp


# Thresholds a float32 holds exactly, as the model's threshold buffer does.
@pytest.mark.parametrize("threshold", [0.375, 0.5, 0.75])
def test_metrics_and_confusion_matrix_agree_with_counts_made_by_hand(threshold: float) -> None:
    probs, targets = _scores(seed=3)
    probs[:5] = threshold  # exactly at the threshold: NORMAL (PNEUMONIA only above it)
    tn, fp, fn, tp = counts_by_hand(probs, targets, threshold)
    assert confusion_matrix(probs, targets, threshold).tolist() == [[tn, fp], [fn, tp]]
    m = metrics_at(probs, targets, threshold)
    assert m["accuracy"] == pytest.approx((tp + tn) / len(targets))
    assert m["recall"] == pytest.approx(tp / (tp + fn))
    assert m["specificity"] == pytest.approx(tn / (tn + fp))
    assert m["precision"] == pytest.approx(tp / (tp + fp))
    assert m["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
