"""Binary metrics on the PNEUMONIA probability, bootstrap intervals and the threshold rules.

Binary, not multiclass: a multiclass micro-F1 equals accuracy and hides what a screening tool
needs to show (sensitivity against specificity).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torchmetrics import CatMetric, Metric, MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryAUROC,
    BinaryAveragePrecision,
    BinaryF1Score,
    BinaryPrecision,
    BinaryRecall,
    BinarySpecificity,
)
from torchmetrics.functional.classification import (
    binary_accuracy,
    binary_confusion_matrix,
    binary_f1_score,
    binary_precision,
    binary_recall,
    binary_roc,
    binary_specificity,
)
from torchmetrics.wrappers import BootStrapper

from pneumonia.calibration import bayes_threshold

ThresholdRule = Literal["bayes", "f1", "youden", "sensitivity"]
THRESHOLD_RULES = ("bayes", "f1", "youden", "sensitivity")


def thresholded_metrics(threshold: float = 0.5) -> MetricCollection:
    """Metrics that depend on the decision threshold."""
    return MetricCollection(
        {
            "accuracy": BinaryAccuracy(threshold=threshold),
            "precision": BinaryPrecision(threshold=threshold),
            "recall": BinaryRecall(threshold=threshold),
            "specificity": BinarySpecificity(threshold=threshold),
            "f1": BinaryF1Score(threshold=threshold),
        }
    )


def ranking_metrics() -> MetricCollection:
    """Threshold-free metrics."""
    return MetricCollection({"auroc": BinaryAUROC(), "average_precision": BinaryAveragePrecision()})


@dataclass(frozen=True)
class EpochPredictions:
    """One validation or test epoch's predictions, gathered from all ranks."""

    probs: torch.Tensor  # PNEUMONIA probability (calibrated, at the model's prevalence)
    targets: torch.Tensor  # 1 = PNEUMONIA
    threshold: float  # the decision threshold in force after this epoch
    scores: torch.Tensor | None = None  # logit differences, before calibration


def prediction_store() -> nn.ModuleDict:
    """Collects an epoch's scores (logit differences) and targets; CatMetric gathers ranks."""
    return nn.ModuleDict({"scores": CatMetric(), "targets": CatMetric()})


def gathered_predictions(store: nn.ModuleDict) -> tuple[torch.Tensor, torch.Tensor]:
    """All ranks' scores and targets from a :func:`prediction_store`, which is reset."""
    if not store["scores"].update_called:
        return torch.zeros(0), torch.zeros(0, dtype=torch.long)
    scores = store["scores"].compute().flatten().float().cpu()
    targets = store["targets"].compute().flatten().long().cpu()
    store["scores"].reset()
    store["targets"].reset()
    return scores, targets


def metrics_at(probs: torch.Tensor, targets: torch.Tensor, threshold: float) -> dict[str, float]:
    """The thresholded metrics of :func:`thresholded_metrics`, for one fixed threshold."""
    kw = {"threshold": threshold}
    return {
        "accuracy": binary_accuracy(probs, targets, **kw).item(),
        "precision": binary_precision(probs, targets, **kw).item(),
        "recall": binary_recall(probs, targets, **kw).item(),
        "specificity": binary_specificity(probs, targets, **kw).item(),
        "f1": binary_f1_score(probs, targets, **kw).item(),
    }


def confusion_matrix(probs: torch.Tensor, targets: torch.Tensor, threshold: float) -> torch.Tensor:
    """(2, 2) counts: rows are true NORMAL/PNEUMONIA, columns predicted."""
    return binary_confusion_matrix(probs, targets, threshold=threshold)


def choose_threshold(
    probs: torch.Tensor,
    targets: torch.Tensor,
    rule: ThresholdRule | float,
    *,
    target_sensitivity: float = 0.95,
    cost_ratio: float = 1.0,
) -> float:
    """Decision threshold on the PNEUMONIA probability.

    Args:
        rule: ``"bayes"`` is the cost-minimising threshold on calibrated probabilities,
            ``1 / (1 + cost_ratio)``, and needs no validation predictions (see
            ``pneumonia.calibration``); the others are tuned on validation predictions:
            ``"f1"`` maximises F1; ``"youden"`` maximises sensitivity + specificity - 1;
            ``"sensitivity"`` takes the highest threshold whose sensitivity reaches
            ``target_sensitivity``. A number is used as it is. The tuned rules pick a point
            of the validation ROC, which on a nearly separable split lies in the extreme tail
            of the scores and moves with every few images.
    """
    if isinstance(rule, int | float) and not isinstance(rule, bool):
        if not 0.0 <= float(rule) <= 1.0:
            raise ValueError(f"model.threshold_rule={rule} must lie in [0, 1]")
        return float(rule)
    if rule not in THRESHOLD_RULES:
        raise ValueError(
            f"model.threshold_rule={rule!r} is not one of {', '.join(THRESHOLD_RULES)} "
            "or a number in [0, 1]"
        )
    if rule == "bayes":
        return bayes_threshold(cost_ratio)
    targets = targets.long()
    if targets.numel() == 0 or targets.min() == targets.max():
        return 0.5  # one class only: no curve to choose from
    probs = probs.float()
    # Curves count ``prob >= t`` as positive, torchmetrics (and this project) ``prob > t``: the
    # midpoint to the next lower score gives the same partition under ``>``.
    fpr, tpr, thresholds = binary_roc(probs, targets)  # thresholds fall, tpr rises
    lower = torch.cat([thresholds[1:], thresholds.new_zeros(1)])
    cut = ((thresholds.clamp(0, 1) + lower) / 2).clamp(0, 1)
    if rule == "youden":
        return float(cut[int(torch.argmax(tpr - fpr))])
    if rule == "f1":
        precision = tpr / (tpr + fpr * (targets == 0).sum() / (targets == 1).sum()).clamp_min(1e-12)
        f1 = 2 * precision * tpr / (precision + tpr).clamp_min(1e-12)
        return float(cut[int(torch.argmax(f1))])
    if not 0.0 < target_sensitivity <= 1.0:
        raise ValueError(f"model.target_sensitivity={target_sensitivity} must lie in (0, 1]")
    reaching = torch.nonzero(tpr >= target_sensitivity - 1e-12).flatten()
    return float(cut[int(reaching[0])])


def bootstrap_interval(
    metric: Metric,
    probs: torch.Tensor,
    targets: torch.Tensor,
    resamples: int = 1000,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``metric`` (torchmetrics' BootStrapper).

    Uses the global torch RNG: seed it (inside ``torch.random.fork_rng``) for a repeatable
    interval.
    """
    alpha = (1 - confidence) / 2
    boot = BootStrapper(
        metric,
        num_bootstraps=resamples,
        quantile=torch.tensor([alpha, 1 - alpha]),
        sampling_strategy="multinomial",
        sync_on_compute=False,  # the predictions given are all there is: no other ranks
    )
    boot.update(probs, targets)
    low, high = boot.compute()["quantile"].tolist()
    return low, high
