"""A checkpoint on a set of labelled images, and the report on it, with honest error bars.

The library under ``pneumonia-evaluate``, the API's ``Classifier.evaluate`` and the notebook:

- :mod:`~pneumonia.evaluation.scoring`: any labelled folder, or one of the training run's
  splits, scored (:func:`score`), and the whole evaluation (:func:`evaluate_checkpoint`);
- :mod:`~pneumonia.evaluation.report`: the metrics with percentile-bootstrap intervals (on
  Kermany's 624 test images accuracy alone moves by about +-3 points between resamples, which
  a single number hides), and for the images like and unlike the training images;
- :mod:`~pneumonia.evaluation.markdown`: ``report.md``.

The rows of ``predictions.csv`` and the most confident mistakes are ``Predictions``'.
"""

from pneumonia.evaluation.markdown import markdown
from pneumonia.evaluation.report import report, shift_report
from pneumonia.evaluation.scoring import EVALUATE_BATCH_SIZE, SPLITS, evaluate_checkpoint, score

__all__ = [
    "EVALUATE_BATCH_SIZE",
    "SPLITS",
    "evaluate_checkpoint",
    "markdown",
    "report",
    "score",
    "shift_report",
]
