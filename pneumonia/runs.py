"""Run folders: checking one can be written before a command starts, finding and reading
training runs (for notebooks and scripts)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback


class RunFolderError(OSError):
    """The folder a command would write its outputs to cannot be written."""


def check_writable(folder: Path) -> None:
    """Create ``folder`` if needed and write a probe file into it.

    Raises:
        RunFolderError: saying which folder, why, and how to choose another.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as e:
        raise RunFolderError(
            f"The run folder {folder} cannot be written ({e.strerror or e}). Write the run "
            "elsewhere with hydra.run.dir=/a/writable/folder (or paths.log_dir=... for every "
            "run), or make the folder writable."
        ) from e


class WritableRunFolder(Callback):
    """Hydra callback: check the run folder before Hydra sets up its log file there, which
    would otherwise fail with "Unable to configure handler 'file'" and the cause buried."""

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        check_writable(Path(config.hydra.run.dir))

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        check_writable(Path(config.hydra.sweep.dir))


def runs_root() -> Path:
    """Where ``python -m pneumonia.train`` puts its runs, read from the config (``hydra.run.dir``
    less its date folder; ``PNEUMONIA_ROOT`` moves it, as it moves the runs)."""
    from pneumonia.config import compose

    return Path(compose("train").hydra.run.dir).parent


def latest_run(root: str | Path | None = None) -> Path:
    """The newest run directory under ``root`` (default :func:`runs_root`) that finished."""
    root = runs_root() if root is None else Path(root)
    runs = sorted(p.parent for p in root.glob("*/metrics.json"))
    if not runs:
        raise FileNotFoundError(
            f"No finished training run under {root}. Train one first, e.g. "
            "python -m pneumonia.train experiment=demo"
        )
    return runs[-1]


def run_dir_from_env(default_root: str | Path | None = None) -> Path:
    """``PNEUMONIA_RUN_DIR`` if set, else the latest finished run."""
    value = os.environ.get("PNEUMONIA_RUN_DIR")
    return Path(value) if value else latest_run(default_root)


def read_metrics(run_dir: str | Path) -> dict:
    return json.loads((Path(run_dir) / "metrics.json").read_text())


def best_checkpoint(run_dir: str | Path) -> Path:
    """The run's best checkpoint (from metrics.json), else its last.ckpt."""
    run_dir = Path(run_dir)
    best = read_metrics(run_dir).get("best_model_path")
    if best and Path(best).is_file():
        return Path(best)
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        return last
    raise FileNotFoundError(f"{run_dir} holds no checkpoint (checkpoints/ is empty or missing)")


def read_scalars(run_dir: str | Path) -> dict[str, tuple[list[int], list[float]]]:
    """Every TensorBoard scalar of a run: tag -> (steps, values), merged over event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(Path(run_dir) / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return {
        tag: ([e.step for e in acc.Scalars(tag)], [e.value for e in acc.Scalars(tag)])
        for tag in acc.Tags()["scalars"]
    }
