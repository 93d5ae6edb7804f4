"""A checkpoint on labelled images, and the report on it, with honest error bars.

The library under ``pneumonia-evaluate``, ``pneumonia-compare``, the API's
``Classifier.evaluate`` and the notebook:

- :mod:`~pneumonia.evaluation.scoring`: any labelled folder, or one of the training run's
  splits, scored (:func:`score`), and the whole evaluation (:func:`evaluate_checkpoint`);
- :mod:`~pneumonia.evaluation.report`: the report's numbers (:func:`metrics_report`: every
  metric with its percentile-bootstrap interval; on Kermany's 624 test images accuracy alone
  moves by about +-3 points between resamples, which a single number hides), calibration,
  operating points, and the images like and unlike the training images;
- :mod:`~pneumonia.evaluation.subgroups`: bacterial and viral pneumonia, sex, age band, view;
- :mod:`~pneumonia.evaluation.report_md`: ``report.md`` (:func:`evaluation_markdown`);
- :mod:`~pneumonia.evaluation.generalisation`: the checks after training (the validation split
  under simulated acquisition changes, the holdout folder) and the shift reference of a run;
- :mod:`~pneumonia.evaluation.comparison`: two models on the same images (DeLong, McNemar).

The rows of ``predictions.csv`` and the most confident mistakes are ``Predictions``'.
"""

from pneumonia.evaluation.report import metrics_report, shift_report
from pneumonia.evaluation.report_md import evaluation_markdown
from pneumonia.evaluation.scoring import EVALUATE_BATCH_SIZE, SPLITS, evaluate_checkpoint, score

__all__ = [
    "EVALUATE_BATCH_SIZE",
    "SPLITS",
    "evaluate_checkpoint",
    "evaluation_markdown",
    "metrics_report",
    "score",
    "shift_report",
]
