"""The decision: from a calibrated PNEUMONIA probability to a class, and the record of how.

- :func:`bayes_threshold`, the default rule: on calibrated probabilities, calling PNEUMONIA
  above ``1 / (1 + cost_ratio)`` minimises the expected cost; it needs no tuning on validation.
- :func:`choose_threshold`: that rule, the rules tuned on validation (``f1``, ``youden``,
  ``sensitivity``) or a fixed number.
- :func:`fit_on_validation`: what each validation epoch fits (the temperature, the threshold)
  and the proper scores it reports.
- :class:`Decision`: the record of rule, threshold and calibration that reports and exports
  carry (``pneumonia.decision.prior_shift`` re-bases probabilities on the prevalence of the
  images at hand).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import torch
from scipy.stats import binomtest
from torchmetrics.functional.classification import binary_roc

from pneumonia.decision.calibration import (
    brier,
    calibrate,
    fit_temperature,
    logit,
    nll,
)
from pneumonia.decision.metrics import OPERATING_LEVELS, level_name, rates_at, threshold_at
from pneumonia.errors import InputValueError

log = logging.getLogger(__name__)

ThresholdRule = Literal["bayes", "f1", "youden", "sensitivity"]
THRESHOLD_RULES = ("bayes", "f1", "youden", "sensitivity")


def bayes_threshold(cost_ratio: float) -> float:
    """The probability above which calling PNEUMONIA costs less, on calibrated probabilities.

    Args:
        cost_ratio: cost of a missed pneumonia (false negative) / cost of a false alarm.
    """
    if not cost_ratio > 0:
        raise InputValueError(f"model.cost_ratio={cost_ratio} must be positive")
    return 1.0 / (1.0 + cost_ratio)


def choose_threshold(
    probs: torch.Tensor,
    targets: torch.Tensor,
    rule: ThresholdRule | float,
    *,
    target_sensitivity: float | None = None,
    cost_ratio: float | None = None,
) -> float:
    """Decision threshold on the PNEUMONIA probability.

    Args:
        rule: ``"bayes"`` is the cost-minimising threshold on calibrated probabilities,
            ``1 / (1 + cost_ratio)`` (:func:`bayes_threshold`), and needs no validation
            predictions; the others are tuned on validation predictions:
            ``"f1"`` maximises F1; ``"youden"`` maximises sensitivity + specificity - 1;
            ``"sensitivity"`` takes the highest threshold whose sensitivity reaches
            ``target_sensitivity``. A number is used as it is. The tuned rules pick a point
            of the validation ROC, which on a nearly separable split lies in the extreme tail
            of the scores and moves with every few images.
    """
    if isinstance(rule, int | float) and not isinstance(rule, bool):
        if not 0.0 <= float(rule) <= 1.0:
            raise InputValueError(f"model.threshold_rule={rule} must lie in [0, 1]")
        return float(rule)
    if rule not in THRESHOLD_RULES:
        raise InputValueError(
            f"model.threshold_rule={rule!r} is not one of {', '.join(THRESHOLD_RULES)} "
            "or a number in [0, 1]"
        )
    if rule == "bayes":
        if cost_ratio is None:
            raise InputValueError("threshold_rule=bayes needs the cost ratio (model.cost_ratio)")
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
    if target_sensitivity is None or not 0.0 < target_sensitivity <= 1.0:
        raise InputValueError(f"model.target_sensitivity={target_sensitivity} must lie in (0, 1]")
    reaching = torch.nonzero(tpr >= target_sensitivity - 1e-12).flatten()
    return float(cut[int(reaching[0])])


def check_decision(
    rule: ThresholdRule | float, target_sensitivity: float, cost_ratio: float, prevalence: float
) -> None:
    """The decision's settings can work, or an error names the one that cannot."""
    choose_threshold(
        torch.zeros(0),
        torch.zeros(0),
        rule,
        target_sensitivity=target_sensitivity,
        cost_ratio=cost_ratio,
    )
    if not 0.0 < prevalence < 1.0:
        raise InputValueError(
            f"model.prevalence={prevalence} must lie strictly between 0 and 1 (a prevalence)"
        )


@dataclass(frozen=True)
class Decision:
    """How a score becomes a class: the calibration, the rule and the threshold it gave.

    Built from the model's buffers and hyperparameters (``PneumoniaClassifier.decision``);
    reports, ``metrics.json`` and exports carry it as :meth:`to_dict`.
    """

    threshold_rule: str | float  # bayes | f1 | youden | sensitivity | a number
    threshold: float  # PNEUMONIA when the calibrated probability is above it
    cost_ratio: float  # cost of a missed pneumonia / cost of a false alarm (bayes)
    prevalence: float  # the PNEUMONIA prevalence the probabilities are calibrated for
    temperature: float
    reference_prevalence: float  # the prevalence the training loss implied
    target_sensitivity: float  # the sensitivity rule's target
    # what pneumonia.recalibrate re-fitted on a site's labelled images, and what it promises
    # there (pneumonia.decision.recalibration.RefitRecord.to_dict); None: as trained
    recalibration: dict[str, Any] | None = None

    @property
    def bayes(self) -> bool:
        """The threshold is the cost-minimising one on calibrated probabilities, so it stays
        right when the probabilities move to another prevalence."""
        return self.threshold_rule == "bayes"

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        if record["recalibration"] is None:
            del record["recalibration"]  # as trained: the record of earlier versions
        return record

    def describe(self, shift: dict[str, Any] | None = None) -> str:
        """One sentence for a report: the threshold, its rule, and the calibration behind it.

        Args:
            shift: the record of ``prior_shift.adapt_to_prevalence``, when the probabilities were
                re-based on the prevalence of the images scored.
        """
        line = f"Threshold {self.threshold:.3f} from rule `{self.threshold_rule}`"
        if self.bayes:
            line += f" (cost ratio {self.cost_ratio:g}: 1 / (1 + cost ratio))"
        line += (
            f"; probabilities calibrated (temperature {self.temperature:.2f}) for a "
            f"PNEUMONIA prevalence of {self.prevalence:g}"
        )
        if shift:
            line += (
                f", then re-based to {shift['estimated_prevalence']:.3f}, the prevalence EM "
                "estimated for these images"
            )
            if not shift.get("converged", True):
                line += f" (EM did not converge in {shift['iterations']} iterations)"
        line += "."
        if self.recalibration:
            from pneumonia.decision.recalibration import describe_refit

            line += " " + describe_refit(self.recalibration)
        return line


@dataclass(frozen=True)
class ValidationFit:
    """What one validation epoch sets and reports (see :func:`fit_on_validation`)."""

    decision: Decision  # with the new temperature and threshold
    probs: torch.Tensor  # calibrated with the new temperature, at the decision's prevalence
    nll: float  # of the uncalibrated scores, at the split's own prevalence
    brier: float


def fit_on_validation(
    scores: torch.Tensor, targets: torch.Tensor, decision: Decision, *, refit_temperature: bool
) -> ValidationFit:
    """The temperature (refitted when asked) and the threshold of the decision's rule on one
    validation epoch's scores, with the proper scores that choose a checkpoint.

    The proper scores (log loss, Brier) are of the uncalibrated scores at the split's own
    prevalence: they keep discriminating where AUROC and accuracy saturate, and nothing in
    them was fitted on this split, so they are fair grounds for choosing a checkpoint.
    """
    reference_logit = logit(decision.reference_prevalence)
    own = float(targets.float().mean().clamp(1e-3, 1 - 1e-3))
    raw = calibrate(scores, reference_logit=reference_logit, prevalence=own)
    temperature = decision.temperature
    if refit_temperature:
        temperature = fit_temperature(scores, targets, offset=logit(own) - reference_logit)
    probs = calibrate(
        scores,
        temperature=temperature,
        reference_logit=reference_logit,
        prevalence=decision.prevalence,
    )
    threshold = choose_threshold(
        probs,
        targets,
        decision.threshold_rule,
        target_sensitivity=decision.target_sensitivity,
        cost_ratio=decision.cost_ratio,
    )
    fitted = replace(decision, temperature=temperature, threshold=threshold)
    return ValidationFit(fitted, probs, nll(raw, targets), brier(raw, targets))


# Named operating thresholds chosen on validation and stored in the checkpoint, selectable by
# name (``threshold=spec95`` in evaluate and predict): specXX reaches a specificity of XX%,
# sensXX a sensitivity of XX% (the levels: metrics.OPERATING_LEVELS).
RATE_CONFIDENCE = 0.95  # of the interval stored with each named threshold


def exact_interval(successes: int, n: int, confidence: float = RATE_CONFIDENCE) -> list[float]:
    """The exact (Clopper-Pearson) interval of the rate ``successes / n``: a rate reached on the
    images that chose its threshold, or a re-fit's cross-validated rate."""
    ci = binomtest(successes, n).proportion_ci(confidence, method="exact")
    return [float(ci.low), float(ci.high)]


def operating_thresholds(
    probs: torch.Tensor, targets: torch.Tensor, levels: tuple[float, ...] = OPERATING_LEVELS
) -> dict[str, dict[str, Any]]:
    """``specXX`` and ``sensXX`` (:func:`~pneumonia.decision.metrics.threshold_at`, the one
    operating-point algorithm, as evaluation's operating points), each with the sensitivity and
    specificity it gives on these images, the number of images that chose it (negatives for
    spec, positives for sens) and the exact 95% interval of the rate it reached on them. Empty
    without both classes."""
    t = targets.long().flatten()
    counts = {"specificity": int((t == 0).sum()), "sensitivity": int((t == 1).sum())}
    table: dict[str, dict[str, Any]] = {}
    for level in levels:
        for prefix, rate in (("spec", "specificity"), ("sens", "sensitivity")):
            threshold = threshold_at(probs, targets, level, rate)
            if threshold is None:
                return {}
            entry: dict[str, Any] = {"threshold": threshold, **rates_at(probs, targets, threshold)}
            n = counts[rate]  # the images that chose it
            interval = exact_interval(round(entry[rate] * n), n)
            entry |= {"images": n, "interval": interval}
            table[f"{prefix}{level_name(level)}"] = entry
    return table


def uncertain_thresholds(
    table: dict[str, dict[str, Any]], classes: tuple[str, str], slack: float = 0.10
) -> str | None:
    """One warning naming each named threshold whose rate, on new patients, could lie more than
    ``slack`` below its level (the lower end of the exact, Clopper-Pearson, interval of the rate
    it reached on the images that chose it); None when none could. ``classes``: the negative
    and the positive class's names. 95% specificity on 5 NORMAL images could be 48%. The
    threshold was chosen on the same images, so the interval leans optimistic, if anything."""
    loose = []
    for name, entry in table.items():
        rate = "specificity" if name.startswith("spec") else "sensitivity"
        low, high = entry["interval"]
        if low < int(name[4:]) / 100 - slack:
            images = f"{entry['images']} {classes[rate == 'sensitivity']}"
            loose.append(f"{name} ({images}: {rate} {low:.0%}-{high:.0%})")
    if not loose:
        return None
    return (
        f"Named thresholds chosen on few validation images: {', '.join(loose)}, the "
        f"{RATE_CONFIDENCE:.0%} intervals of the rates each could hold on new patients. A larger "
        "validation split (data.val_fraction, data.val_split) pins them down."
    )
