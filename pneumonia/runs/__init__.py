"""A run's folder and what happens to it: where runs go and what they leave
(:mod:`~pneumonia.runs.folders`), stopping and resuming (:mod:`~pneumonia.runs.resume`), and
MLflow / W&B tracking (:mod:`~pneumonia.runs.tracking`).

The names below are those of the module ``pneumonia.runs`` that this package replaced
(issue 27), handed on for one release; new code imports them from
:mod:`pneumonia.runs.folders`.
"""

from pneumonia.runs.folders import (
    RunFolder,
    RunFolderError,
    best_checkpoint,
    check_writable,
    latest_run,
    read_scalars,
    run_dir_from_env,
    runs_root,
)
from pneumonia.runs.layout import OUTPUTS, read_metrics
from pneumonia.runs.owners import LOCK, training_folder

__all__ = [
    "LOCK",
    "OUTPUTS",
    "RunFolder",
    "RunFolderError",
    "best_checkpoint",
    "check_writable",
    "latest_run",
    "read_metrics",
    "read_scalars",
    "run_dir_from_env",
    "runs_root",
    "training_folder",
]
