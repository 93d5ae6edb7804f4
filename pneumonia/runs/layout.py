"""What a training run leaves in its folder, named once: ``metrics.json`` (the run finished),
``checkpoints/`` with ``last.ckpt`` (the run can continue), and which checkpoint stands for the
run: its best, else its last."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pneumonia.errors import InputValueError

METRICS = "metrics.json"
# A sweep's job that failed: its error, so that the job is named, not lost (pneumonia-aggregate)
FAILED = "failed.txt"
CHECKPOINTS = "checkpoints"
LAST = "last.ckpt"
# What a training run leaves in its folder, and no other run may write over.
OUTPUTS = (METRICS, CHECKPOINTS)


def metrics_file(run_dir: str | Path) -> Path:
    return Path(run_dir) / METRICS


def last_checkpoint(run_dir: str | Path) -> Path:
    """Where the run's last checkpoint is (or would be)."""
    return Path(run_dir) / CHECKPOINTS / LAST


def read_metrics(run_dir: str | Path) -> dict[str, Any]:
    """A run's ``metrics.json``.

    Raises:
        InputValueError: the file is not a JSON object (cut short, or edited by hand).
    """
    path = metrics_file(run_dir)
    try:
        metrics = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        metrics = e
    if not isinstance(metrics, dict):
        raise InputValueError(
            f"{path} is not a run's metrics.json ({metrics}): the run writes it whole at its "
            "end, so it was cut short or edited. Move the run folder aside, or run the job "
            "again to write it anew."
        )
    return metrics


def best_or_last(run_dir: str | Path, best: str | Path | None) -> Path | None:
    """The checkpoint that stands for a run: its ``best`` (metrics.json's ``best_model_path``)
    where that file exists, else its last.ckpt where that exists, else None."""
    if best and Path(best).is_file():
        return Path(best)
    last = last_checkpoint(run_dir)
    return last if last.is_file() else None
