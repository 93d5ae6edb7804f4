"""The report of an evaluation: every metric with a percentile-bootstrap interval, the
calibration before and after the stored temperature, the operating points, and the metrics of
the images like and unlike the training images.

A set of one class (only NORMAL images: how many does the model wrongly call PNEUMONIA?) is a
legitimate question with a smaller answer: its one rate, the counts and the calibration terms
one class defines. What weighs one class against the other is None, never a NaN or the
trivial number a formula gives (precision 1.0 when every image is PNEUMONIA), and named in
``one_class`` so that the pages can say so."""

from __future__ import annotations

from typing import Any

import torch

from pneumonia.decision.calibration import (
    RELIABILITY_BINS,
    binning,
    brier_decomposition,
    calibrate,
    calibration_line,
    logit,
    nll,
    reliability,
    scores_of,
)
from pneumonia.decision.metrics import (
    BOOTSTRAP_RESAMPLES,
    CONFIDENCE,
    OPERATING_LEVELS,
    confusion_matrix,
    metrics_with_intervals,
    operating_point_metrics,
    with_interval,
)
from pneumonia.decision.predictions import Predictions
from pneumonia.decision.rules import Decision
from pneumonia.decision.shift import ShiftReference

# What needs images of both classes (issue 28): for a set of one class, None in both metric
# sections, as are the operating points (threshold choice on these images), PPV and NPV, the
# calibration line and the ROC and PR curves.
NEEDS_BOTH_CLASSES = ("precision", "f1", "auroc", "average_precision")
# The rate a set of one class tells, by its class (1: PNEUMONIA), and its complement.
ONE_CLASS_RATES = {0: ("specificity", "false_positive_rate"), 1: ("recall", "false_negative_rate")}


def only_class(targets: torch.Tensor) -> int | None:
    """1 when every image is PNEUMONIA, 0 when every image is NORMAL, None otherwise."""
    if not len(targets) or targets.min() != targets.max():
        return None
    return int(targets[0])


def shift_report(preds: Predictions, reference: ShiftReference, **bootstrap: Any) -> dict:
    """How many images are unlike the training images, and the metrics of each group, with
    intervals (a group with one class only has no AUROC; an empty one, no metrics)."""
    inside = preds.in_distribution
    flagged = int((~inside).sum())
    groups = {"in_distribution": preds.subset(inside), "flagged": preds.subset(~inside)}
    return {
        **reference.describe(),
        "num_flagged": flagged,
        "share_flagged": flagged / len(inside) if len(inside) else 0.0,
        **{
            name: metrics_with_intervals(
                group.probs, group.targets, group.threshold, ranking=True, **bootstrap
            )
            if len(group.probs)
            else None
            for name, group in groups.items()
        },
    }


def by_source(preds: Predictions, **bootstrap: Any) -> dict[str, dict] | None:
    """Per ``source`` (a table's dataset or site), its images, PNEUMONIA count and metrics with
    intervals; None where the images come from one source or none names it."""
    sources = [(a or {}).get("source") for a in preds.attributes or []]
    names = sorted({str(s) for s in sources if s is not None})
    if len(names) < 2:
        return None
    groups = {}
    for name in names:
        group = preds.subset(torch.tensor([str(s) == name for s in sources]))
        groups[name] = {
            "num_images": len(group.probs),
            "num_pneumonia": int(group.targets.sum()),
            "metrics": metrics_with_intervals(
                group.probs.float(), group.targets.long(), group.threshold, ranking=True,
                **bootstrap,
            ),
        }  # fmt: skip
    return groups


def calibration_report(
    preds: Predictions, decision: Decision, bins: int = RELIABILITY_BINS
) -> dict[str, Any] | None:
    """Whether the probability can be read as one: for the probabilities without the stored
    temperature and with it (both at the decision's prevalence), the reliability curve with its
    bin counts, the ECE over those bins, the Brier score and its decomposition, the calibration
    slope and intercept, and the NLL. Of the probabilities as the checkpoint gives them,
    before any prior shift. None for no images."""
    if not len(preds.targets):
        return None
    targets = preds.targets.long()
    reference = logit(decision.reference_prevalence)
    scores = preds.scores
    if scores is None:  # an evaluation keeps probabilities: their scores, by the inverse
        scores = scores_of(preds.probs, temperature=decision.temperature,
                           reference_logit=reference, prevalence=decision.prevalence)  # fmt: skip
    sections = {}
    for name, temperature in (("before_temperature", 1.0), ("after_temperature",
                                                           decision.temperature)):  # fmt: skip
        probs = calibrate(scores, temperature=temperature, reference_logit=reference,
                          prevalence=decision.prevalence)  # fmt: skip
        curve = reliability(probs, targets, bins)
        line = calibration_line(probs, targets)
        if only_class(targets) is not None:  # no logistic fit to one class: None, not NaN
            line = {"mean_probability": float(probs.double().mean()),
                    "observed_rate": float(targets.double().mean()),
                    **dict.fromkeys(line)}  # fmt: skip
        sections[name] = {
            "temperature": float(temperature),
            "ece": curve["ece"],
            "nll": nll(probs, targets),
            **brier_decomposition(probs, targets, bins),
            **line,
            "bins": curve["bins"],
        }
    return {
        "binning": binning(bins),
        "prevalence": decision.prevalence,
        **sections,
    }


def operating_points(
    preds: Predictions,
    prevalence: float | None = None,
    points: tuple[float, ...] = OPERATING_LEVELS,
    **bootstrap: Any,
) -> dict[str, Any]:
    """Sensitivity at each specificity of ``points`` and specificity at each sensitivity, with
    the threshold that reaches it on these images and a bootstrap interval; for a stated
    ``prevalence`` (a clinic's, not the images'), PPV and NPV at the stored threshold."""
    probs, targets = preds.probs.float(), preds.targets.long()
    collection = operating_point_metrics(preds.threshold, prevalence, points)
    both = len(targets) and 0 < int(targets.sum()) < len(targets)
    section: dict[str, Any] = {}
    for name, metric in collection.items():
        if not both:
            section[name] = None  # a curve, and PPV and NPV (both rates), need both classes
            continue
        entry = with_interval(metric, probs, targets, **bootstrap)
        if hasattr(metric, "threshold_reached"):
            fitted = metric.clone()
            fitted.update(probs, targets)
            entry["threshold"] = fitted.threshold_reached()
        section[name] = entry
    values = {"ppv": section.pop("ppv", None), "npv": section.pop("npv", None)}
    result = {"points": list(points), **section}
    if prevalence is not None:
        result["at_prevalence"] = {"prevalence": prevalence, "threshold": preds.threshold,
                                   **values}  # fmt: skip
    return result


def metrics_report(
    preds: Predictions,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> dict[str, Any]:
    """Metrics at the predictions' threshold and at 0.5, each with a percentile bootstrap
    interval.

    Every interval is drawn from the same resamples of the images (each metric's bootstrap
    starts from ``seed``), so the report is the same for the same predictions, and a metric
    at a threshold of 0.5 gets one interval in both sections.
    """
    probs, targets = preds.probs.float(), preds.targets.long()
    bootstrap = {"resamples": resamples, "confidence": confidence, "seed": seed}
    result = {
        "metrics": metrics_with_intervals(
            probs, targets, preds.threshold, ranking=True, **bootstrap
        ),
        "metrics_at_0.5": metrics_with_intervals(probs, targets, 0.5, ranking=False, **bootstrap),
        "confusion_matrix": confusion_matrix(probs, targets, preds.threshold).tolist(),
        "confusion_matrix_at_0.5": confusion_matrix(probs, targets, 0.5).tolist(),
        "num_images": len(targets),
        "num_pneumonia": int(targets.sum()),
        "threshold": preds.threshold,
        "bootstrap": bootstrap,
    }
    present = only_class(targets)
    if present is not None:
        result["one_class"] = _one_class(result, present)
    return result


def _one_class(result: dict[str, Any], present: int) -> dict[str, Any]:
    """For a set of one class: the metrics that need both set to None, the complement of its
    one rate added with the same interval turned round (``1 - rate``: the percentiles of a
    complement are the complements of the percentiles), and what is and is not reported."""
    rate, complement = ONE_CLASS_RATES[present]
    for section in ("metrics", "metrics_at_0.5"):
        metrics = result[section]
        for name in NEEDS_BOTH_CLASSES:
            if name in metrics:
                metrics[name] = None
        m = metrics[rate]
        metrics[complement] = {"value": 1 - m["value"], "ci_low": 1 - m["ci_high"],
                               "ci_high": 1 - m["ci_low"]}  # fmt: skip
    return {
        "positive": bool(present),
        "reported": [rate, complement, "accuracy", "confusion_matrix", "calibration"],
        "not_computed": [*NEEDS_BOTH_CLASSES, "npv", "roc_curve", "pr_curve",
                         "operating_points", "calibration_line", "threshold_choice"],
    }  # fmt: skip
