"""Calibrated probabilities: scores made into probabilities that mean what they say.

The classifier's score is the logit difference ``z = logit_PNEUMONIA - logit_NORMAL``. Three
things turn it into a probability that means what it says:

- the **reference prevalence** the training loss implied: 0.5 with class-weighted CE (the
  weights balance the classes), the training split's prevalence without;
- a **temperature** ``T`` fitted on validation (Guo et al. 2017, "On calibration of modern
  neural networks"), which rescales confidence without changing any ranking;
- the **prevalence** of the population the probability is for. Moving from one prevalence to
  another is a shift of the log odds (Bayes' rule, the label-shift assumption: the images of
  each class look the same, only their proportions change).

With calibrated probabilities the decision needs no tuning on validation
(``pneumonia.decision.rules``).
Where the prevalence of new images is unknown, :func:`em_prevalence` estimates it from the
unlabelled probabilities (Saerens, Latinne and Decaestecker, Neural Computation 14(1), 2002).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from pneumonia.decision.logistic import logistic_line, logistic_offset
from pneumonia.errors import InputValueError

# Probabilities are clamped this far from 0 and 1 before taking logs.
EPS = 1e-6
TEMPERATURE_BOUNDS = (0.05, 20.0)


def logit_difference(logits: torch.Tensor, positive_index: int) -> torch.Tensor:
    """(B, 2) logits -> (B,) scores ``z``: the positive class's logit minus the other's, in
    float32."""
    logits = logits.float()
    return logits[:, positive_index] - logits[:, 1 - positive_index]


def logit(p: float) -> float:
    """log(p / (1 - p)) of a prevalence in (0, 1)."""
    if not 0.0 < p < 1.0:
        raise InputValueError(f"a prevalence must lie strictly between 0 and 1, got {p}")
    return math.log(p / (1.0 - p))


def calibrate(
    scores: torch.Tensor,
    *,
    temperature: float | torch.Tensor = 1.0,
    reference_logit: float | torch.Tensor = 0.0,
    prevalence: float = 0.5,
) -> torch.Tensor:
    """Scores -> the PNEUMONIA probability for a population of PNEUMONIA ``prevalence``.

    Args:
        scores: logit differences ``z``.
        temperature: divides ``z`` (see :func:`fit_temperature`).
        reference_logit: logit of the prevalence the model's scores were trained under.
    """
    return torch.sigmoid(scores.float() / temperature + (logit(prevalence) - reference_logit))


def scores_of(
    probs: torch.Tensor,
    *,
    temperature: float | torch.Tensor = 1.0,
    reference_logit: float | torch.Tensor = 0.0,
    prevalence: float = 0.5,
) -> torch.Tensor:
    """The inverse of :func:`calibrate`: the logit differences behind calibrated probabilities
    (for averaged views, the score whose probability is the average)."""
    p = probs.double().clamp(EPS, 1 - EPS)
    return ((torch.logit(p) - (logit(prevalence) - reference_logit)) * temperature).float()


def loss_prevalence(
    counts: Sequence[int], class_weights: torch.Tensor | None, positive_index: int
) -> float:
    """The PNEUMONIA prevalence a (weighted) training loss sees: the class counts times their
    weights. 0.5 with the default weights ``n / (k * n_c)``; the split's own without weights."""
    seen = torch.tensor(list(counts), dtype=torch.float64)
    if class_weights is not None:
        seen = seen * class_weights.double().cpu()
    return min(max(float(seen[positive_index] / seen.sum()), EPS), 1 - EPS)


def shift_prevalence(probs: torch.Tensor, source: float, target: float) -> torch.Tensor:
    """Probabilities for a population of prevalence ``source`` -> of prevalence ``target``."""
    p = probs.double().clamp(EPS, 1 - EPS)
    return torch.sigmoid(torch.log(p / (1 - p)) + (logit(target) - logit(source))).to(probs.dtype)


def nll(probs: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean negative log-likelihood (log loss): a strictly proper scoring rule."""
    p = probs.double().clamp(EPS, 1 - EPS)
    t = targets.double()
    return float(-(t * p.log() + (1 - t) * (1 - p).log()).mean()) if len(t) else float("nan")


def brier(probs: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean squared error of the probability: a strictly proper scoring rule, bounded."""
    return float(((probs.double() - targets.double()) ** 2).mean()) if len(targets) else math.nan


RELIABILITY_BINS = 10


def reliability(
    probs: torch.Tensor, targets: torch.Tensor, bins: int = RELIABILITY_BINS
) -> dict[str, object]:
    """A calibration curve: ``bins`` equal-width bins of the probability, each with its count,
    mean probability and observed share of positives (None where empty), and the expected
    calibration error over those bins (the count-weighted mean gap; torchmetrics'
    ``binary_calibration_error``, l1 norm)."""
    from torchmetrics.functional.classification import binary_calibration_error

    p, t = probs.double().clamp(0, 1), targets.double()
    index = torch.clamp((p * bins).long(), max=bins - 1)  # [k/bins, (k+1)/bins), 1.0 in the last
    rows = []
    for k in range(bins):
        inside = index == k
        n = int(inside.sum())
        rows.append({
            "low": k / bins, "high": (k + 1) / bins, "count": n,
            "mean_probability": float(p[inside].mean()) if n else None,
            "observed": float(t[inside].mean()) if n else None,
        })  # fmt: skip
    ece = binary_calibration_error(p.float(), targets.long(), n_bins=bins, norm="l1")
    return {
        "bins": rows,
        "ece": float(ece) if len(t) else math.nan,
        "binning": binning(bins),
    }


def binning(bins: int) -> str:
    """How :func:`reliability` bins, in words: the one label reports and figures show."""
    return f"{bins} equal-width bins of the probability"


def brier_decomposition(
    probs: torch.Tensor, targets: torch.Tensor, bins: int = RELIABILITY_BINS
) -> dict[str, float]:
    """Murphy's (1973) decomposition of the Brier score over ``bins`` equal-width bins:
    ``brier = reliability - resolution + uncertainty + within``.

    reliability (lower is better): the count-weighted squared gap between each bin's mean
    probability and its observed share; resolution (higher is better): how far the bins'
    observed shares spread around the overall one; uncertainty: ``base * (1 - base)``, the
    images' own; within: what binning leaves out (the spread of probabilities inside bins).
    """
    p, t = probs.double().clamp(0, 1), targets.double()
    n = len(t)
    if not n:
        return {
            k: math.nan for k in ("brier", "reliability", "resolution", "uncertainty", "within")
        }
    base = float(t.mean())
    full = [b for b in reliability(p, t.long(), bins)["bins"] if b["count"]]  # its binning
    reliability_term = (
        sum(b["count"] * (b["mean_probability"] - b["observed"]) ** 2 for b in full) / n
    )
    resolution = sum(b["count"] * (b["observed"] - base) ** 2 for b in full) / n
    total = brier(p, t)
    uncertainty = base * (1 - base)
    return {
        "brier": total,
        "reliability": reliability_term,
        "resolution": resolution,
        "uncertainty": uncertainty,
        "within": total - (reliability_term - resolution + uncertainty),
    }


def calibration_line(probs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Cox's (1958) logistic recalibration ``logit P(y=1) = intercept + slope * logit(p)``
    (:func:`logistic_line`): slope 1 and intercept 0 for calibrated probabilities; a slope below
    1 means overconfident ones. ``in_the_large``: the intercept with the slope held at 1
    (calibration in the large: above 0, the probabilities are too low on average).
    NaN where the images hold one class only."""
    t = targets.double()
    if not len(t) or t.min() == t.max():
        return {"slope": math.nan, "intercept": math.nan, "in_the_large": math.nan}
    x = torch.logit(probs.double().clamp(EPS, 1 - EPS))
    intercept, slope = logistic_line(x, t)
    return {"slope": slope, "intercept": intercept, "in_the_large": logistic_offset(x, t)}


def fit_temperature(
    scores: torch.Tensor,
    targets: torch.Tensor,
    *,
    offset: float = 0.0,
    bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
    iterations: int = 80,
) -> float:
    """The ``T`` minimising the NLL of ``sigmoid(scores / T + offset)``.

    The NLL is convex in ``1 / T``, so a golden-section search over ``[1 / hi, 1 / lo]`` finds
    the minimum. Bounded: on a nearly separable validation split the NLL keeps falling as
    ``T -> 0``, which would make every later probability 0 or 1.

    Args:
        offset: log-odds shift from the model's reference prevalence to the validation split's.
    """
    targets = targets.long()
    if len(targets) == 0 or targets.min() == targets.max():
        return 1.0  # one class only: nothing to calibrate against
    z, t = scores.double(), targets.double()

    def loss(beta: float) -> float:
        return float(torch.nn.functional.binary_cross_entropy_with_logits(beta * z + offset, t))

    lo, hi = 1.0 / bounds[1], 1.0 / bounds[0]
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = loss(a), loss(b)
    for _ in range(iterations):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = loss(b)
    return 1.0 / ((lo + hi) / 2)


def em_prevalence(
    probs: torch.Tensor,
    prevalence: float,
    *,
    tolerance: float = 1e-6,
    max_iterations: int = 1000,
) -> tuple[float, int, bool]:
    """Estimate the prevalence of unlabelled images from their calibrated probabilities.

    The EM of Saerens et al. (2002): re-weight each posterior by the ratio of the current
    prevalence estimate to the one the probabilities assume, take the mean as the new estimate,
    until it stops moving.

    Args:
        prevalence: the prevalence ``probs`` were computed for.

    Returns:
        The estimate, the iterations it took, and whether it converged (moved by less than
        ``tolerance``) within ``max_iterations``.
    """
    if len(probs) == 0:
        raise ValueError("em_prevalence needs at least one probability")
    estimate = prevalence
    for i in range(1, max_iterations + 1):
        adjusted = shift_prevalence(probs.double(), prevalence, estimate)
        new = float(adjusted.mean().clamp(EPS, 1 - EPS))
        if abs(new - estimate) < tolerance:
            return new, i, True
        estimate = new
    return estimate, max_iterations, False
