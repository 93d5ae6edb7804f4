"""A checkpoint on labelled images, and the report on it, with honest error bars.

The library under ``pneumonia-evaluate``, ``pneumonia-compare``, the API's
``Classifier.evaluate`` and the notebook:

- :mod:`~pneumonia.evaluation.scoring`: any labelled folder, or one of the training run's
  splits, scored (:func:`score`), and the whole evaluation (:func:`evaluate_checkpoint`),
  whose numbers come from :mod:`pneumonia.decision.report` (every metric with its
  percentile-bootstrap interval, calibration, operating points, the images like and unlike
  the training images) and :mod:`pneumonia.decision.subgroups`;
- :mod:`~pneumonia.evaluation.report_md`: ``report.md`` (:func:`evaluation_markdown`);
- :mod:`~pneumonia.evaluation.generalisation`: the checks after training (the validation split
  under simulated acquisition changes, the holdout folder) and the shift reference of a run;
- :mod:`~pneumonia.evaluation.comparison`: two models on the same images (DeLong, McNemar).
"""

from pneumonia.evaluation.report_md import evaluation_markdown
from pneumonia.evaluation.scoring import EVALUATE_BATCH_SIZE, SPLITS, evaluate_checkpoint, score

__all__ = [
    "EVALUATE_BATCH_SIZE",
    "SPLITS",
    "evaluate_checkpoint",
    "evaluation_markdown",
    "score",
]
