"""Label-shift adaptation (``prior_shift=em``): the probabilities re-based on the prevalence
of the images at hand, estimated from their own unlabelled probabilities (Saerens, Latinne and
Decaestecker, Neural Computation 14(1), 2002), so that a Bayes threshold decides for that
population. It assumes that only the class proportions changed: it refuses where that cannot
hold (too few images, a threshold not from the Bayes rule, images mostly unlike the training
images).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from pneumonia.decision.calibration import em_prevalence, shift_prevalence
from pneumonia.decision.rules import Decision
from pneumonia.decision.shift import ShiftReference
from pneumonia.errors import InputValueError

log = logging.getLogger(__name__)

PRIOR_SHIFTS = ("none", "em")
# Probability quantiles per class of the images a decision was fitted on (validation, or a
# re-fit's site), stored in checkpoints as "class_probabilities": EM's assumption is checked
# against them.
QUANTILES = 101
# Below this p-value the images' probabilities are not a mix of the two classes' reference
# probabilities: their images changed, not only the share of each class.
MIXTURE_P = 0.01
# Fewer images than this say too little about their population's prevalence: EM on 3 images
# estimated 0.994 and turned a NORMAL image's 0.504 into 0.994 PNEUMONIA.
EM_MIN_IMAGES = 30


# Above this share of images unlike the training images, EM's assumption (only the class
# proportions changed) is plainly false.
EM_MAX_FLAGGED = 0.5


def check_prior_shift(
    method: str, decision: Decision, num_images: int, flagged_share: float | None = None
) -> None:
    """Refuse a prior shift that cannot work, before any image is scored (and again after,
    when the share of images unlike the training images is known).

    Raises:
        ValueError: an unknown method, a threshold not from the Bayes rule, too few images, or
            a set of images mostly unlike the training images.
    """
    if method not in PRIOR_SHIFTS:
        raise InputValueError(f"prior_shift={method!r}: use one of {', '.join(PRIOR_SHIFTS)}")
    if method == "none":
        return
    if not decision.bayes:
        raise InputValueError(
            f"prior_shift={method} re-bases calibrated probabilities for a Bayes decision; this "
            f"checkpoint's threshold comes from threshold_rule={decision.threshold_rule!r}, "
            "which a prevalence shift would not move consistently. Use prior_shift=none."
        )
    if num_images < EM_MIN_IMAGES:
        raise InputValueError(
            f"prior_shift={method} estimates the PNEUMONIA prevalence of the images scored "
            f"together, and needs at least {EM_MIN_IMAGES} of one population; there are "
            f"{num_images}. Score more images at once, or use prior_shift=none."
        )
    if flagged_share is not None and flagged_share > EM_MAX_FLAGGED:
        raise InputValueError(
            f"prior_shift={method} assumes the images of each class look as in training and "
            f"only their proportions changed, but {flagged_share:.0%} of these images do not "
            "look like the training images (shift_score above its threshold). Use "
            "prior_shift=none, and check these images by other means."
        )


def class_probabilities(probs: torch.Tensor, targets: torch.Tensor) -> dict[str, Any] | None:
    """The record EM's check reads: :data:`QUANTILES` quantiles of the probabilities of each
    class (0: negative, 1: positive) and the images behind them; None without both classes."""
    p, t = probs.double().flatten(), targets.long().flatten()
    if not (t == 0).any() or not (t == 1).any():
        return None
    levels = torch.linspace(0, 1, QUANTILES, dtype=torch.float64)
    return {
        "quantiles": [torch.quantile(p[t == c], levels).tolist() for c in (0, 1)],
        "images": [int((t == 0).sum()), int((t == 1).sum())],
    }


def mixture_check(
    probs: torch.Tensor, prevalence: float, reference: dict[str, Any]
) -> dict[str, float]:
    """How well these images' probabilities fit the mix, at ``prevalence``, of the reference
    images' probabilities of each class: what label shift implies (each class looks as it did,
    only the shares changed). The Kolmogorov-Smirnov distance between the two distributions,
    and its p-value for the images on both sides (the reference's, interpolated between its
    quantiles, count as their number of images)."""
    from scipy.stats import kstwo

    p = torch.sort(probs.double().flatten()).values
    levels = torch.linspace(0, 1, len(reference["quantiles"][0]), dtype=torch.float64)

    def cdf(quantiles: list[float], x: torch.Tensor) -> torch.Tensor:
        q = torch.tensor(quantiles, dtype=torch.float64)
        index = torch.searchsorted(q, x, right=True).clamp(1, len(q) - 1)
        lo, hi = q[index - 1], q[index]
        share = ((x - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1)
        value = levels[index - 1] + share * (levels[index] - levels[index - 1])
        return torch.where(x < q[0], 0.0, torch.where(x >= q[-1], 1.0, value))

    mix = (1 - prevalence) * cdf(reference["quantiles"][0], p) + prevalence * cdf(
        reference["quantiles"][1], p
    )
    n = len(p)
    above = torch.arange(1, n + 1, dtype=torch.float64) / n - mix
    below = mix - torch.arange(0, n, dtype=torch.float64) / n
    distance = float(torch.maximum(above, below).max())
    m = sum(reference["images"])
    effective = max(1, round(n * m / (n + m)))
    return {"distance": distance, "p_value": float(kstwo.sf(distance, effective))}


def adapt_to_prevalence(
    probs: torch.Tensor,
    decision: Decision,
    method: str = "none",
    *,
    flagged_share: float | None = None,
    reference: dict[str, Any] | None = None,
) -> tuple[torch.Tensor, dict[str, Any] | None]:
    """Probabilities re-based on the prevalence of these (unlabelled) images.

    ``em`` estimates the prevalence of the images with ``calibration.em_prevalence`` and
    shifts every probability to it; with a Bayes threshold the stored threshold then makes the
    cost-minimising decision for this population. Assumes label shift: the images of each
    class look as they did in training, only their proportions differ. Needs at least
    :data:`EM_MIN_IMAGES` images from one population (:func:`check_prior_shift`).

    Args:
        flagged_share: the share of these images unlike the training images
            (``pneumonia.decision.shift``); above :data:`EM_MAX_FLAGGED`, EM is refused.
        reference: the checkpoint's ``class_probabilities`` (:func:`class_probabilities`):
            where these images' probabilities are not a mix of the reference classes' at the
            estimated prevalence (:func:`mixture_check`), the images changed, not only their
            proportions, and a warning says the estimate is biased. Without one, it says
            that this cannot be checked.

    Returns:
        The probabilities, and a record of the estimate (None for ``none``); an estimate that
        did not converge is recorded (``converged``), logged, and named in the report.
    """
    check_prior_shift(method, decision, len(probs), flagged_share)
    if method == "none":
        return probs, None
    estimate, iterations, converged = em_prevalence(probs, decision.prevalence)
    log.info(
        "Prevalence of these %d images estimated at %.3f (EM, %d iterations); the model's "
        "probabilities were for %.3f",
        len(probs),
        estimate,
        iterations,
        decision.prevalence,
    )
    if not converged:
        log.warning(
            "The EM estimate of the prevalence did not converge in %d iterations: the images "
            "may not come from one population, or be too few; treat the re-based "
            "probabilities with care (or use prior_shift=none).",
            iterations,
        )
    check = mixture_check(probs, estimate, reference) if reference else None
    if check is None:
        log.warning(
            "This checkpoint records no probabilities of its validation images by class (it "
            "predates them), so whether these images changed, beyond their share of "
            "pneumonia, cannot be checked: EM's estimate is biased where they did."
        )
    elif check["p_value"] < MIXTURE_P:
        log.warning(
            "EM assumes that only the share of pneumonia changed, and these images say "
            "otherwise: their probabilities are not a mix of the validation images' NORMAL and "
            "PNEUMONIA probabilities at any share near %.3f (Kolmogorov-Smirnov distance %.3f, "
            "p = %.2g). The images themselves changed (another site, scanner or population), "
            "so the estimated prevalence is biased, and so is every decision re-based on it. "
            "Label some of these images and re-fit the decision on them "
            "(pneumonia-recalibrate), or use prior_shift=none.",
            estimate, check["distance"], check["p_value"],
        )  # fmt: skip
    record = {
        "method": method,
        "estimated_prevalence": estimate,
        "iterations": iterations,
        "converged": converged,
        "model_prevalence": decision.prevalence,
        "num_images": len(probs),
        "mixture_check": check,
    }
    return shift_prevalence(probs, decision.prevalence, estimate), record


def flag_and_rebase(
    probs: torch.Tensor,
    shift_scores: torch.Tensor | None,
    reference: ShiftReference | None,
    decision: Decision,
    prior_shift: str = "none",
    class_reference: dict[str, Any] | None = None,
) -> tuple[torch.Tensor, dict[str, Any] | None]:
    """What every command does with a set of scored images, in this order: flag those unlike
    the training images (by the checkpoint's shift ``reference``; None for a checkpoint
    without one), say how many and warn where many are (:func:`warn_if_unlike_training`), and
    re-base the probabilities on these images' prevalence (``prior_shift=em``, refused where
    too many are flagged).

    Returns:
        The probabilities, and the prior shift's record (None for ``none``).
    """
    flagged_share = None
    if reference is not None and shift_scores is not None and len(shift_scores):
        flagged = int((~reference.in_distribution(shift_scores)).sum())
        warn_if_unlike_training(flagged, len(shift_scores), reference)
        flagged_share = flagged / len(shift_scores)
    return adapt_to_prevalence(
        probs, decision, prior_shift, flagged_share=flagged_share, reference=class_reference
    )


# Above this share of flagged images, a run warns that its figures may not hold.
WARN_SHARE = 0.20


def warn_if_unlike_training(flagged: int, total: int, shift: ShiftReference) -> None:
    """Log how many images were flagged, and warn, in words a clinician reads, when more than
    :data:`WARN_SHARE` of them were."""
    share = flagged / total if total else 0.0
    log.info(
        "%d of %d images (%.0f%%) flagged as unlike the training images (shift score above "
        "%.4g, %s; it flags %.0f%% of the validation images)",
        flagged, total, 100 * share, shift.threshold, shift.method, 100 * shift.flag_rate,
    )  # fmt: skip
    if share > WARN_SHARE:
        log.warning(
            "%.0f%% of these images do not look like the images this model was trained on. "
            "Its probabilities, and any figure computed from them, may not hold for these "
            "images: do not rely on them without checking them by other means.",
            100 * share,
        )
