"""Re-fitting a decision on labelled images of a new site (``pneumonia.recalibrate``).

A model that ranks a new site's images well can still score them higher or lower than its
validation images, and a decision fitted on validation then calls too many of one class the
other. A temperature alone cannot move a decision at 0.5 (``z / T = 0`` where ``z = 0``); an
intercept can. The rules, each fitted on the site's scores ``z``:

- ``platt`` (the default): intercept and slope, ``P(y=1) = sigmoid(a + b z)`` on Platt's (1999)
  soft targets, then the checkpoint's Bayes rule at the chosen prevalence (the command's
  default: the labelled images' own share, which met specificity >= 0.90 with sensitivity >=
  0.95 more often than 0.5 did on the sites we could build: benchmarks/RESULTS.md);
- ``intercept``: the intercept alone; ``temperature``: the temperature alone (for comparison);
- ``spec90``, ``spec95``, ``sens90``, ``sens95``: ``platt``, then the threshold that reached
  that rate on the site's images.

The fit is stored in the checkpoint's own terms (``temperature = 1 / b``, reference prevalence
``logit(pi) - a`` for the sample's share ``pi``), so every command reads a re-fitted checkpoint
as any other. What a rule promises is estimated out of sample (each image decided by the rule
re-fitted without its fold, stratified k-fold), each rate with its exact interval.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from pneumonia.decision.calibration import calibrate, fit_temperature, logit
from pneumonia.decision.logistic import logistic_line, logistic_offset, platt_targets
from pneumonia.decision.metrics import OPERATING_LEVELS, level_name, rates_at, threshold_at
from pneumonia.decision.rules import RATE_CONFIDENCE, Decision, bayes_threshold, exact_interval
from pneumonia.errors import InputValueError

CALIBRATIONS = ("platt", "intercept", "temperature")
OPERATING_RULES = tuple(
    f"{prefix}{level_name(level)}" for level in OPERATING_LEVELS for prefix in ("spec", "sens")
)
REFIT_RULES = CALIBRATIONS + OPERATING_RULES
DEFAULT_RULE = "platt"
# Fewer images of a class than this leave a fitted line to a handful of images.
MIN_PER_CLASS = 10
CV_FOLDS = 10
# A promised rate whose interval is wider than this says little: a warning says so.
WIDE_INTERVAL = 0.20


def operating_level(rule: str) -> tuple[str, float] | None:
    """``"spec95"`` -> ("specificity", 0.95); None for a calibration rule."""
    if rule not in OPERATING_RULES:
        return None
    return ("specificity" if rule.startswith("spec") else "sensitivity"), int(rule[4:]) / 100


def check_sample(rule: str, targets: torch.Tensor, classes: tuple[str, str]) -> None:
    """Refuse a rule the images cannot fit: an unknown rule, a class with fewer than
    :data:`MIN_PER_CLASS` images, or a named rate that these images cannot tell from 100%
    (``spec95`` needs 20 NORMAL images before one false alarm is allowed).

    Args:
        classes: the negative and the positive class's names.
    """
    if rule not in REFIT_RULES:
        raise InputValueError(f"rule={rule!r}: use one of {', '.join(REFIT_RULES)}")
    t = targets.long()
    counts = {classes[0]: int((t == 0).sum()), classes[1]: int((t == 1).sum())}
    few = [f"{n} {name}" for name, n in counts.items() if n < MIN_PER_CLASS]
    if few:
        raise InputValueError(
            f"Re-fitting a decision needs at least {MIN_PER_CLASS} labelled images of each "
            f"class; these images hold {' and '.join(few)} "
            f"({counts[classes[0]]} {classes[0]}, {counts[classes[1]]} {classes[1]} in all). "
            "Label more of the site's images (benchmarks/RESULTS.md gives the sample size that "
            "restores the planned rates)."
        )
    level = operating_level(rule)
    if level:
        rate, value = level
        name = classes[rate == "sensitivity"]
        needed = math.ceil(1 / (1 - value) - 1e-9)
        if counts[name] < needed:
            raise InputValueError(
                f"rule={rule} asks for a {rate} of {value:.0%} from {counts[name]} {name} "
                f"images: with fewer than {needed}, not one mistake is allowed, so it cannot be "
                f"told from 100%. Label at least {needed} {name} images (several times that "
                f"for a useful interval), or use rule={DEFAULT_RULE}."
            )


def refit(
    scores: torch.Tensor,
    targets: torch.Tensor,
    decision: Decision,
    rule: str = DEFAULT_RULE,
    prevalence: float | None = None,
) -> Decision:
    """The decision re-fitted by ``rule`` on labelled scores ``z`` of a site's images.

    Args:
        decision: the checkpoint's (its temperature, reference prevalence and cost ratio).
        prevalence: the PNEUMONIA prevalence the probabilities are for; None keeps the
            checkpoint's.

    Raises:
        InputValueError: scores that rank these images backwards (a slope <= 0).
    """
    z, t = scores.double(), targets.double()
    sample = min(max(float(t.mean()), 1e-3), 1 - 1e-3)
    temperature, reference = decision.temperature, logit(decision.reference_prevalence)
    if rule == "temperature":
        temperature = fit_temperature(z, t, offset=logit(sample) - reference)
    elif rule == "intercept":
        reference = logit(sample) - logistic_offset(z / temperature, platt_targets(t))
    else:  # platt, and the operating rules' probabilities
        intercept, slope = logistic_line(z, platt_targets(t))
        if not slope > 0:
            raise InputValueError(
                f"On these images the model's scores rank the classes backwards (fitted slope "
                f"{slope:.3g}): a re-fitted decision cannot mend that. Check the labels (a "
                "swapped class folder?) and the images."
            )
        temperature, reference = 1 / slope, logit(sample) - intercept
    fitted = replace(
        decision,
        temperature=temperature,
        reference_prevalence=1 / (1 + math.exp(-reference)),
        prevalence=decision.prevalence if prevalence is None else prevalence,
        threshold_rule="bayes",
        threshold=bayes_threshold(decision.cost_ratio),
        recalibration=None,  # the caller's record (refit_record) says what this re-fit did
    )
    level = operating_level(rule)
    if level:
        probs = probabilities(z, fitted)
        edge = threshold_at(probs, t.long(), level[1], level[0])
        # Midway to the next probability above: the same images called on either side, and
        # none sits on the threshold, where a rounding in another program would flip it.
        above = probs[probs > edge]
        threshold = float((edge + above.min()) / 2) if len(above) else edge
        fitted = replace(fitted, threshold_rule=threshold, threshold=threshold)
    return fitted


def probabilities(scores: torch.Tensor, decision: Decision) -> torch.Tensor:
    """Scores -> the decision's calibrated probabilities."""
    d = decision
    return calibrate(scores, temperature=d.temperature, prevalence=d.prevalence,
                     reference_logit=logit(d.reference_prevalence)).double()  # fmt: skip


def stratified_folds(targets: torch.Tensor, folds: int, seed: int = 0) -> torch.Tensor:
    """(N,) fold of each image: each class dealt round the folds in a seeded random order."""
    t = targets.long()
    fold = torch.empty(len(t), dtype=torch.long)
    generator = torch.Generator().manual_seed(seed)
    for c in (0, 1):
        members = torch.nonzero(t == c).flatten()
        order = members[torch.randperm(len(members), generator=generator)]
        fold[order] = torch.arange(len(order)) % folds
    return fold


def cross_validated(
    scores: torch.Tensor,
    targets: torch.Tensor,
    decision: Decision,
    rule: str,
    prevalence: float | None = None,
    *,
    folds: int = CV_FOLDS,
    seed: int = 0,
) -> torch.Tensor:
    """(N,) decisions (1: PNEUMONIA) of each image by the rule re-fitted on the other folds."""
    fold = stratified_folds(targets, folds, seed)
    called = torch.zeros(len(targets), dtype=torch.long)
    for k in range(folds):
        held = fold == k
        if not held.any():
            continue
        fitted = refit(scores[~held], targets[~held], decision, rule, prevalence)
        called[held] = (probabilities(scores[held], fitted) > fitted.threshold).long()
    return called


def promised_rates(called: torch.Tensor, targets: torch.Tensor) -> dict[str, dict[str, Any]]:
    """Sensitivity and specificity of ``called`` decisions, each with its count of images and
    its exact interval."""
    t = targets.long()
    rates = {}
    for rate, cls, hit in (("sensitivity", 1, 1), ("specificity", 0, 0)):
        n = int((t == cls).sum())
        k = int((called[t == cls] == hit).sum())
        interval = exact_interval(k, n) if n else [math.nan, math.nan]
        rates[rate] = {"value": k / n if n else math.nan, "images": n, "interval": interval}
    return rates


@dataclass(frozen=True)
class RefitRecord:
    """What a re-fit changed, on which images, and what it promises there; stored in the
    re-fitted checkpoint and shown by every command that reads it (``Decision.recalibration``)."""

    rule: str
    threshold: float  # the re-fitted decision's, on the probabilities it calibrates
    source: str  # the labelled images' folder or table
    images: dict[str, int]  # per class name
    sample_prevalence: float  # the PNEUMONIA share of those images
    prevalence: float  # the prevalence the probabilities are now for
    flagged_share: float | None  # of those images unlike the training images (shift score)
    original: str  # the checkpoint it was re-fitted from
    before: dict[str, Any]  # temperature, reference prevalence, threshold rule and threshold
    in_sample: dict[str, float]  # the rates at the new threshold on the images that fitted it
    promised: dict[str, dict[str, Any]]  # cross-validated rates with exact intervals
    method: str  # how ``promised`` was estimated
    date: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def refit_record(
    scores: torch.Tensor,
    targets: torch.Tensor,
    decision: Decision,
    fitted: Decision,
    *,
    rule: str,
    classes: tuple[str, str],
    source: str,
    original: str,
    date: str,
    flagged_share: float | None = None,
    prevalence: float | None = None,
    folds: int = CV_FOLDS,
    seed: int = 0,
) -> RefitRecord:
    """The record of ``fitted`` (``refit`` of ``decision`` on these scores), with its rates
    cross-validated over ``folds`` stratified folds (fewer where a class has fewer images)."""
    t = targets.long()
    folds = max(2, min(folds, int((t == 0).sum()), int((t == 1).sum())))
    called = cross_validated(scores, t, decision, rule, prevalence, folds=folds, seed=seed)
    return RefitRecord(
        rule=rule,
        threshold=fitted.threshold,
        source=source,
        images={classes[0]: int((t == 0).sum()), classes[1]: int((t == 1).sum())},
        sample_prevalence=float(t.double().mean()),
        prevalence=fitted.prevalence,
        flagged_share=flagged_share,
        original=original,
        before={
            "temperature": decision.temperature,
            "reference_prevalence": decision.reference_prevalence,
            "threshold_rule": decision.threshold_rule,
            "threshold": decision.threshold,
        },
        in_sample=rates_at(probabilities(scores, fitted), t, fitted.threshold),
        promised=promised_rates(called, t),
        method=(
            f"{folds}-fold cross-validation on these images (each decided by the rule re-fitted "
            f"without its fold), exact {RATE_CONFIDENCE:.0%} intervals"
        ),
        date=date,
    )


def describe_refit(record: dict[str, Any]) -> str:
    """One sentence on a re-fit, for reports and logs: the rule, the images, and the rates it
    promises on that site with their intervals."""
    images = ", ".join(f"{n} {name}" for name, n in record["images"].items())
    rates = "; ".join(
        f"{rate} {entry['value']:.3f} ({entry['interval'][0]:.3f}-{entry['interval'][1]:.3f})"
        for rate, entry in record["promised"].items()
    )
    return (
        f"Re-fitted by pneumonia.recalibrate (rule `{record['rule']}`) on {images} images of "
        f"{record['source']} ({record['date']}); at its threshold {record['threshold']:.3f} "
        f"it promises, on that site, {rates} "
        f"({record['method']})."
    )


def wide_promises(record: RefitRecord) -> str | None:
    """A warning naming each promised rate whose interval is wider than :data:`WIDE_INTERVAL`,
    or None."""
    wide = [
        f"{rate} {entry['value']:.3f} ({entry['interval'][0]:.3f}-{entry['interval'][1]:.3f}, "
        f"from {entry['images']} images)"
        for rate, entry in record.promised.items()
        if entry["interval"][1] - entry["interval"][0] > WIDE_INTERVAL
    ]
    if not wide:
        return None
    return (
        f"Few images behind the re-fitted decision: {', '.join(wide)}: on this site the rate "
        f"could lie anywhere in its {RATE_CONFIDENCE:.0%} interval. More labelled images of the "
        "site narrow it (about 100 of a class give +-0.06 at a rate of 0.9)."
    )
