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


def adapt_to_prevalence(
    probs: torch.Tensor,
    decision: Decision,
    method: str = "none",
    *,
    flagged_share: float | None = None,
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
    record = {
        "method": method,
        "estimated_prevalence": estimate,
        "iterations": iterations,
        "converged": converged,
        "model_prevalence": decision.prevalence,
        "num_images": len(probs),
    }
    return shift_prevalence(probs, decision.prevalence, estimate), record


def flag_and_rebase(
    probs: torch.Tensor,
    shift_scores: torch.Tensor | None,
    reference: ShiftReference | None,
    decision: Decision,
    prior_shift: str = "none",
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
    return adapt_to_prevalence(probs, decision, prior_shift, flagged_share=flagged_share)


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
