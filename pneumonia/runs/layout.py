"""What a training run leaves in its folder, named once: ``metrics.json`` (the run finished),
``checkpoints/`` with ``last.ckpt`` (the run can continue), and which checkpoint stands for the
run: its best, else its last."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

METRICS = "metrics.json"
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
    return json.loads(metrics_file(run_dir).read_text())


def best_or_last(run_dir: str | Path, best: str | Path | None) -> Path | None:
    """The checkpoint that stands for a run: its ``best`` (metrics.json's ``best_model_path``)
    where that file exists, else its last.ckpt where that exists, else None."""
    if best and Path(best).is_file():
        return Path(best)
    last = last_checkpoint(run_dir)
    return last if last.is_file() else None
