"""What a probability means and how good it is: calibration (temperature, prevalence), the
decision rules and named operating thresholds (:mod:`~pneumonia.decision.rules`), the prior
shift, the shift score of images unlike the training images, the binary metrics with their
intervals, and the per-image predictions (``predictions.csv``).

The names below are those of the module ``pneumonia.decision`` that this package replaced
(issue 27), handed on for one release; new code imports them from
:mod:`pneumonia.decision.rules`.
"""

from pneumonia.decision.metrics import OPERATING_LEVELS
from pneumonia.decision.rules import (
    RATE_CONFIDENCE,
    THRESHOLD_RULES,
    Decision,
    ValidationFit,
    bayes_threshold,
    check_decision,
    choose_threshold,
    fit_on_validation,
    operating_thresholds,
    uncertain_thresholds,
)

__all__ = [
    "OPERATING_LEVELS",
    "RATE_CONFIDENCE",
    "THRESHOLD_RULES",
    "Decision",
    "ValidationFit",
    "bayes_threshold",
    "check_decision",
    "choose_threshold",
    "fit_on_validation",
    "operating_thresholds",
    "uncertain_thresholds",
]
