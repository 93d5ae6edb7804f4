"""Binary metrics on the PNEUMONIA probability, and their bootstrap intervals.

Binary, not multiclass: a multiclass micro-F1 equals accuracy and hides what a screening tool
needs to show (sensitivity against specificity).
"""

from __future__ import annotations

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
    BinarySensitivityAtSpecificity,
    BinarySpecificity,
    BinarySpecificityAtSensitivity,
)
from torchmetrics.functional.classification import (
    binary_accuracy,
    binary_confusion_matrix,
    binary_f1_score,
    binary_precision,
    binary_recall,
    binary_specificity,
)
from torchmetrics.wrappers import BootStrapper

# Percentile-bootstrap intervals: how many resamples, at which confidence. The configs
# (evaluate.yaml bootstrap.*, train.yaml checks.resamples) mirror these; a test holds them equal.
BOOTSTRAP_RESAMPLES = 1000
CONFIDENCE = 0.95


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


# Operating points reported by every evaluation: sensitivity where specificity is at least each
# of these, and specificity where sensitivity is.
OPERATING_POINTS = (0.90, 0.95)


class PredictiveValue(Metric):
    """PPV or NPV at ``threshold`` for a population of PNEUMONIA ``prevalence`` (Bayes' rule on
    the sensitivity and specificity these images give), not the images' own prevalence:
    ``PPV = sens*pi / (sens*pi + (1-spec)*(1-pi))``, ``NPV = spec*(1-pi) / (spec*(1-pi) +
    (1-sens)*pi)``. NaN where the images do not define it."""

    full_state_update = False

    def __init__(self, which: str, threshold: float, prevalence: float) -> None:
        super().__init__()
        if which not in ("ppv", "npv"):
            raise ValueError(f"which must be 'ppv' or 'npv', got {which!r}")
        self.which, self.threshold, self.prevalence = which, threshold, prevalence
        for name in ("tp", "fn", "tn", "fp"):
            self.add_state(name, torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, probs: torch.Tensor, targets: torch.Tensor) -> None:
        called, positive = probs > self.threshold, targets.long() == 1
        self.tp += (called & positive).sum()
        self.fn += (~called & positive).sum()
        self.tn += (~called & ~positive).sum()
        self.fp += (called & ~positive).sum()

    def compute(self) -> torch.Tensor:
        pi = self.prevalence
        sens = self.tp / (self.tp + self.fn) if self.tp + self.fn else torch.tensor(float("nan"))
        spec = self.tn / (self.tn + self.fp) if self.tn + self.fp else torch.tensor(float("nan"))
        if self.which == "ppv":
            hits, misses = sens * pi, (1 - spec) * (1 - pi)
        else:
            hits, misses = spec * (1 - pi), (1 - sens) * pi
        return (hits / (hits + misses)).float()


class _ValueAtThreshold:
    """torchmetrics' "X at a minimum Y" metric, its value alone (so that BootStrapper can
    resample it); :meth:`threshold_reached` gives the threshold that reaches it."""

    def compute(self) -> torch.Tensor:
        return super().compute()[0]

    def threshold_reached(self) -> float:
        return float(super().compute()[1])


class SensitivityAtSpecificity(_ValueAtThreshold, BinarySensitivityAtSpecificity):
    """Sensitivity where specificity is at least ``min_specificity``."""


class SpecificityAtSensitivity(_ValueAtThreshold, BinarySpecificityAtSensitivity):
    """Specificity where sensitivity is at least ``min_sensitivity``."""


def operating_point_metrics(
    threshold: float, prevalence: float | None, points: tuple[float, ...] = OPERATING_POINTS
) -> MetricCollection:
    """Sensitivity at each specificity of ``points`` and specificity at each sensitivity
    (torchmetrics'), and, for a stated ``prevalence``, PPV and NPV at ``threshold``."""
    metrics: dict[str, Metric] = {}
    for point in points:
        metrics[f"sensitivity_at_specificity_{point:.0%}".rstrip("%")] = SensitivityAtSpecificity(
            min_specificity=point
        )
        metrics[f"specificity_at_sensitivity_{point:.0%}".rstrip("%")] = SpecificityAtSensitivity(
            min_sensitivity=point
        )
    if prevalence is not None:
        metrics["ppv"] = PredictiveValue("ppv", threshold, prevalence)
        metrics["npv"] = PredictiveValue("npv", threshold, prevalence)
    return MetricCollection(metrics)


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


def bootstrap_interval(
    metric: Metric,
    probs: torch.Tensor,
    targets: torch.Tensor,
    resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = CONFIDENCE,
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
