"""Running a trained checkpoint: files or batches in, probabilities, shift scores and rows out
(:mod:`~pneumonia.inference.runner`), Grad-CAM explanations (:mod:`~pneumonia.inference.explain`)
and the exported network (:mod:`~pneumonia.inference.deployment`).

The names below are those of the module ``pneumonia.inference`` that this package replaced
(issue 27), handed on for one release; new code imports them from
:mod:`pneumonia.inference.runner`.
"""

from pneumonia.decision.prior_shift import WARN_SHARE, warn_if_unlike_training
from pneumonia.inference.runner import (
    PREDICT_BATCH_SIZE,
    autocast,
    inference_precision,
    predict_batches,
    predict_files,
    probabilities,
    score_images,
)

__all__ = [
    "PREDICT_BATCH_SIZE",
    "WARN_SHARE",
    "autocast",
    "inference_precision",
    "predict_batches",
    "predict_files",
    "probabilities",
    "score_images",
    "warn_if_unlike_training",
]
