"""Run folders: checking one can be written before a command starts, cleaning up after a
failed start, storing records into a run's checkpoint, and finding and reading training runs
(for notebooks and scripts). What a run leaves in its folder is named in
:mod:`pneumonia.runs.layout`; holding one while a command runs is :mod:`pneumonia.runs.owners`;
resuming one is :mod:`pneumonia.runs.resume`."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from pneumonia.errors import InputNotFoundError, UserError
from pneumonia.models.checkpoint import add_to_checkpoint
from pneumonia.runs.layout import (
    FAILED,
    METRICS,
    best_or_last,
    last_checkpoint,
    metrics_file,
    read_metrics,
)
from pneumonia.system.files import write_text


class RunFolderError(UserError, OSError):
    """The folder a command would write its outputs to cannot be written, or is another run's."""


def check_writable(folder: Path, setting: str = "hydra.run.dir") -> None:
    """Create ``folder`` if needed and write a probe file into it.

    Args:
        setting: the config key that chooses the folder, for the message.

    Raises:
        RunFolderError: saying which folder, why, and how to choose another.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as e:
        raise RunFolderError(
            f"The output folder {folder} cannot be written ({e.strerror or e}). Write "
            f"elsewhere with {setting}=/a/writable/folder"
            + (" (or paths.log_dir=... for every run)" if setting == "hydra.run.dir" else "")
            + ", or make the folder writable."
        ) from e


class RunFolder(Callback):
    """Hydra callback for the run folder of every command.

    - Before Hydra sets up its log file there: check the folder can be written, which would
      otherwise fail with "Unable to configure handler 'file'" and the cause buried; before a
      sweep's first job, its launcher's and sweeper's tools (:mod:`pneumonia.runs.preflight`).
    - After a job that failed before writing anything of its own: remove the folder, which
      holds only Hydra's record of the config and a log of the error already printed. A
      sweep's job is kept instead, with its error in ``failed.txt``: the sweep's aggregate
      names it (a removed job would vanish from it without a word).
    """

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        with _or_exit():
            check_writable(Path(config.hydra.run.dir))

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        from pneumonia.runs.preflight import check_sweep

        with _or_exit():
            check_writable(Path(config.hydra.sweep.dir))
            check_sweep(config)  # the launcher's and sweeper's tools, before the first job

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus
        from hydra.types import RunMode

        from pneumonia.system.launch import detect

        if job_return.status != JobStatus.FAILED or detect().rank:  # rank 0's folder to clean
            return
        folder = Path(config.hydra.runtime.output_dir)
        if not folder.is_dir():
            return
        if config.hydra.mode == RunMode.MULTIRUN:
            error = job_return._return_value  # the exception (return_value would raise it)
            write_text(folder / FAILED, f"{type(error).__name__}: {error}\n")
            return
        hydras_own = {folder / f"{config.hydra.job.name}.log"}
        hydras_own |= set(folder.glob(f"{config.hydra.job.name}_rank*.log"))  # torchrun, srun
        if config.hydra.output_subdir:
            hydras_own.add(folder / config.hydra.output_subdir)
        if all(path in hydras_own for path in folder.iterdir()):
            shutil.rmtree(folder, ignore_errors=True)
            if config.get("output_dir"):  # its logs/ folder in the user's, if now empty
                with contextlib.suppress(OSError):
                    folder.parent.rmdir()


@contextlib.contextmanager
def _or_exit() -> Iterator[None]:
    """Hydra turns a callback's exception into a warning and goes on (to fail later, with a raw
    traceback): say what is wrong here, and stop before any work."""
    try:
        yield
    except UserError as e:
        sys.stderr.write(f"Error: {e}\n")
        raise SystemExit(1) from None


def runs_root() -> Path:
    """Where ``python -m pneumonia.train`` puts its runs, read from the config (``hydra.run.dir``
    less its date folder; ``PNEUMONIA_ROOT`` moves it, as it moves the runs). Relative to the
    folder a run is launched from, unless ``PNEUMONIA_ROOT`` is absolute."""
    from pneumonia.config import compose

    return Path(compose("train").hydra.run.dir).parent


def _here_or_above(relative: Path) -> list[Path]:
    """``relative`` under the current folder, then under each folder above it: a notebook's
    kernel starts in ``notebooks/``, below the folder the runs were launched from."""
    if relative.is_absolute():
        return [relative]
    return [folder / relative for folder in (Path.cwd(), *Path.cwd().parents)]


def latest_run(root: str | Path | None = None) -> Path:
    """The newest run directory under ``root`` that finished (wrote ``metrics.json``).

    Without ``root``: under :func:`runs_root`, looked for in the current folder and then in
    the folders above it.
    """
    roots = [Path(root)] if root is not None else _here_or_above(runs_root())
    for folder in roots:
        runs = sorted(p.parent for p in folder.glob(f"*/{METRICS}"))
        if runs:
            return runs[-1]
    raise InputNotFoundError(
        f"No finished training run under {roots[0]}"
        + (" or the folders above it" if len(roots) > 1 else "")
        + ". Train one first, e.g. python -m pneumonia.train experiment=demo, or set "
        "PNEUMONIA_RUN_DIR to a run folder."
    )


def run_dir_from_env(default_root: str | Path | None = None) -> Path:
    """``PNEUMONIA_RUN_DIR`` if set (a relative path is looked for in the current folder and
    the folders above it), else the latest finished run."""
    value = os.environ.get("PNEUMONIA_RUN_DIR")
    if not value:
        return latest_run(default_root)
    for folder in _here_or_above(Path(value).expanduser()):
        if folder.is_dir():
            return folder
    raise InputNotFoundError(
        f"PNEUMONIA_RUN_DIR={value} is not a folder here ({Path.cwd()}) or above: give the "
        "run folder's absolute path."
    )


def best_checkpoint(run_dir: str | Path) -> Path:
    """The run's best checkpoint (from metrics.json), else its last.ckpt.

    Raises:
        InputNotFoundError: the run holds neither.
    """
    best = read_metrics(run_dir).get("best_model_path") if metrics_file(run_dir).is_file() else None
    found = best_or_last(run_dir, best)
    if found is None:
        raise InputNotFoundError(
            f"{run_dir} holds no checkpoint ({last_checkpoint(run_dir).parent} is empty or missing)"
        )
    return found


def add_to_run_checkpoint(run_dir: str | Path, best: str | None, records: dict) -> str:
    """:func:`~pneumonia.models.checkpoint.add_to_checkpoint` on the checkpoint that stands for
    a training run (its best, else its last); the path written to, or "" where it has none."""
    target = best_or_last(run_dir, best)
    if target is not None:
        add_to_checkpoint(target, records)
    return str(target or "")


def read_scalars(run_dir: str | Path) -> dict[str, tuple[list[int], list[float]]]:
    """Every TensorBoard scalar of a run: tag -> (steps, values), merged over event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(Path(run_dir) / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return {
        tag: ([e.step for e in acc.Scalars(tag)], [e.value for e in acc.Scalars(tag)])
        for tag in acc.Tags()["scalars"]
    }
