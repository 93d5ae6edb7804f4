"""Binary metrics on the PNEUMONIA probability, each with its bootstrap interval.

Binary, not multiclass: a multiclass micro-F1 equals accuracy and hides what a screening tool
needs to show (sensitivity against specificity). Every threshold follows the project's one rule,
"PNEUMONIA above t" (``probability > threshold``), the operating points included.
"""

from __future__ import annotations

import math
import warnings

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
    binary_specificity,
)
from torchmetrics.utilities import dim_zero_cat
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


# The operating levels, once: the named thresholds chosen on validation (spec90, sens95 ...,
# decision.rules.operating_thresholds) and the operating points every evaluation reports
# (sensitivity where specificity is at least each level, and the reverse).
OPERATING_LEVELS = (0.90, 0.95)


def level_name(level: float) -> str:
    """0.9 -> "90": the level as the names of thresholds and metrics write it."""
    return f"{level:.0%}".rstrip("%")


def threshold_at(
    probs: torch.Tensor, targets: torch.Tensor, level: float, rate: str
) -> float | None:
    """The one operating-point algorithm, for the rule "PNEUMONIA above t": with
    ``rate="specificity"`` the lowest threshold whose specificity is at least ``level`` (the
    most sensitive rule that reaches it), with ``"sensitivity"`` the highest threshold whose
    sensitivity is at least ``level`` (the most specific one). Exact with ties; None without
    both classes."""
    p, t = probs.double().flatten(), targets.long().flatten()
    pos, neg = torch.sort(p[t == 1]).values, torch.sort(p[t == 0]).values
    if not len(pos) or not len(neg):
        return None
    if rate == "specificity":
        k = math.ceil(level * len(neg) - 1e-9)  # negatives at or below t
        return float(neg[max(k, 1) - 1])
    m = math.ceil(level * len(pos) - 1e-9)  # positives above t
    wanted = float(pos[len(pos) - max(m, 1)])  # the m-th highest positive
    below = p[p < wanted]
    return float(below.max()) if len(below) else 0.0


def rates_at(probs: torch.Tensor, targets: torch.Tensor, threshold: float) -> dict[str, float]:
    """Sensitivity and specificity of "PNEUMONIA above ``threshold``"."""
    called, positive = probs.double() > threshold, targets.long() == 1
    return {
        "sensitivity": float(called[positive].double().mean()),
        "specificity": float((~called[~positive]).double().mean()),
    }


class OperatingPoint(Metric):
    """Sensitivity at the threshold that reaches ``level`` specificity (``reached=
    "specificity"``), or specificity where sensitivity reaches it (:func:`threshold_at`); its
    value alone, so that a bootstrap can resample it, and :meth:`threshold_reached`."""

    full_state_update = False

    def __init__(self, reached: str, level: float) -> None:
        super().__init__()
        if reached not in ("specificity", "sensitivity"):
            raise ValueError(f"reached must be 'specificity' or 'sensitivity', got {reached!r}")
        self.reached, self.level = reached, level
        self.add_state("probs", default=[], dist_reduce_fx="cat")
        self.add_state("targets", default=[], dist_reduce_fx="cat")

    def update(self, probs: torch.Tensor, targets: torch.Tensor) -> None:
        self.probs.append(probs.detach().flatten())
        self.targets.append(targets.detach().flatten())

    def threshold_reached(self) -> float | None:
        probs, targets = dim_zero_cat(self.probs), dim_zero_cat(self.targets)
        return threshold_at(probs, targets, self.level, self.reached)

    def compute(self) -> torch.Tensor:
        probs, targets = dim_zero_cat(self.probs), dim_zero_cat(self.targets)
        threshold = threshold_at(probs, targets, self.level, self.reached)
        if threshold is None:
            return torch.tensor(float("nan"))
        other = "sensitivity" if self.reached == "specificity" else "specificity"
        return torch.tensor(rates_at(probs, targets, threshold)[other], dtype=torch.float32)


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


def operating_point_metrics(
    threshold: float, prevalence: float | None, levels: tuple[float, ...] = OPERATING_LEVELS
) -> MetricCollection:
    """Sensitivity where specificity reaches each of ``levels`` and specificity where
    sensitivity does (:class:`OperatingPoint`), and, for a stated ``prevalence``, PPV and NPV at
    ``threshold``."""
    metrics: dict[str, Metric] = {}
    for level in levels:
        name = level_name(level)
        metrics[f"sensitivity_at_specificity_{name}"] = OperatingPoint("specificity", level)
        metrics[f"specificity_at_sensitivity_{name}"] = OperatingPoint("sensitivity", level)
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


def with_interval(
    metric: Metric,
    probs: torch.Tensor,
    targets: torch.Tensor,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> dict[str, float]:
    """A metric's value and its percentile bootstrap interval (the resamples seeded by
    ``seed``, the same for every metric of a report)."""
    value = metric.clone()(probs, targets).item()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        low, high = bootstrap_interval(metric.clone(), probs, targets, resamples, confidence)
    return {"value": value, "ci_low": low, "ci_high": high}


def metrics_with_intervals(
    probs: torch.Tensor,
    targets: torch.Tensor,
    threshold: float,
    *,
    ranking: bool,
    resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> dict[str, dict[str, float] | None]:
    """Each metric at ``threshold`` (and, with ``ranking``, AUROC and AP), with its interval;
    None where the images do not define it (no NORMAL image: no specificity), not the 0
    torchmetrics returns with a warning."""
    collection = thresholded_metrics(threshold)
    if ranking:
        collection.add_metrics(dict(ranking_metrics().items()))
    section = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # resamples without a class warn per metric
        for name, metric in collection.items():
            section[name] = with_interval(
                metric, probs, targets, resamples=resamples, confidence=confidence, seed=seed
            )
    positives, predicted = int(targets.sum()), int((probs > threshold).sum())
    negatives = len(targets) - positives
    undefined = {
        "recall": positives == 0,
        "specificity": negatives == 0,
        "precision": predicted == 0,
        "f1": positives == 0 and predicted == 0,
        "auroc": positives == 0 or negatives == 0,
        "average_precision": positives == 0,
    }
    return {name: None if undefined.get(name) else m for name, m in section.items()}
