"""Stopping and resuming a training run: what a checkpoint may resume, a job run again in its
own folder (finished: skipped; stopped: continued), the command that continues a stopped run in
its own folder, and the record a run resumed elsewhere leaves."""

from __future__ import annotations

import logging
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_only

from pneumonia._moved import current_path
from pneumonia.config import as_params
from pneumonia.data.images import DEFAULT_MAX_UPSCALE
from pneumonia.errors import InputValueError
from pneumonia.models.checkpoint import read_checkpoint
from pneumonia.runs.folders import RunFolderError
from pneumonia.runs.layout import (
    CHECKPOINTS,
    METRICS,
    best_or_last,
    last_checkpoint,
    metrics_file,
    read_metrics,
)
from pneumonia.system.files import write_text

log = logging.getLogger(__name__)


# Settings a resumed run may change without changing the experiment.
_RESUME_MAY_CHANGE = (
    "ckpt_path",
    "paths/",
    "hydra",
    "task_name",
    "data/cache_dir",
    "data/num_workers",
    "callbacks/progress_bar/",
    "trainer/precision",
)


def _settings(config: dict[str, Any]) -> dict[str, Any]:
    """A run's config, flat, with its own run folder written ``<run>``: the folders a run
    writes to (checkpoints, logs) follow it, and are not what the experiment is. Dotted names
    of modules that have moved since the run are read as today's."""
    run = str((config.get("paths") or {}).get("output_dir") or "\0")
    return {  # a _target_ recorded before issue 27 moved its module: the module's name now
        key: current_path(value).replace(run, "<run>") if isinstance(value, str) else value
        for key, value in as_params(config).items()
    }


# Settings added since runs were first recorded, with the value an older run's record stands
# for (a key added with a null default needs no entry: absent reads as None). data.max_upscale
# (issue 26) replaced "smaller than the crop": a run that refused no image under that rule
# refuses none at 4x for any resize up to four times its crop.
_ADDED_SINCE = {"data/max_upscale": DEFAULT_MAX_UPSCALE}


def _changes(stored: dict[str, Any], cfg: DictConfig) -> list[str]:
    """The settings of ``cfg`` that differ from a stored run config, as ``key: old -> new``
    (those a resumed run may change aside)."""
    before = {**_ADDED_SINCE, **_settings(stored)}
    now = {**_ADDED_SINCE, **_settings(OmegaConf.to_container(cfg, resolve=True))}
    return [
        f"{key}: {before.get(key, '(absent)')} -> {now.get(key, '(absent)')}"
        for key in sorted(set(before) | set(now))
        if before.get(key) != now.get(key) and not key.startswith(_RESUME_MAY_CHANGE)
    ]


@dataclass(frozen=True)
class EarlierAttempt:
    """What an earlier attempt of the same job left in its run folder."""

    metrics: dict[str, Any] | None  # it finished: its metrics.json
    last: Path | None  # it stopped: the checkpoint that continues it


def earlier_attempt(output_dir: Path, cfg: DictConfig) -> EarlierAttempt | None:
    """A job started again in its own run folder continues what it left there: a multirun
    repeated with its ``hydra.sweep.dir``, a SLURM job requeued after a preemption, a run given
    its ``hydra.run.dir`` again. Finished (``metrics.json``), it is not run twice; stopped
    (``checkpoints/last.ckpt``), it resumes from its last checkpoint. Only when the settings
    are the same: the ones a resumed run may change aside (``paths``, ``precision``, ...).

    Returns:
        None when the folder holds no checkpoint of a run.

    Raises:
        RunFolderError: the folder holds a run of other settings, which are named.
    """
    metrics = read_metrics(output_dir) if metrics_file(output_dir).is_file() else None
    source = best_or_last(output_dir, (metrics or {}).get("best_model_path"))
    if source is None:
        return None  # no checkpoint to compare with: the run folder's own check decides
    stored = read_checkpoint(source).get("pneumonia", {}).get("config") or {}
    changed = _changes(stored, cfg) if stored else ["(the checkpoint records no settings)"]
    if changed:
        what = METRICS if metrics is not None else CHECKPOINTS
        differences = "\n  ".join(changed)
        raise RunFolderError(
            f"The run folder {output_dir} holds another training run's {what}, with other "
            f"settings:\n  {differences}\nA run there would mix its files with them. Write "
            "this run elsewhere (hydra.run.dir=... or hydra.sweep.dir=...; by default every run "
            "gets a folder of its own), or run it with that run's settings to continue it."
        )
    return EarlierAttempt(metrics, None if metrics is not None else source)


def check_resumable(ckpt: dict[str, Any], path: Path, cfg: DictConfig) -> None:
    """A checkpoint resumes only the architecture it holds: say so before any work. Any
    other setting that differs from the checkpoint's run is named, since the resumed run is
    then another experiment."""
    held = ckpt["hyper_parameters"].get("backbone")
    asked = cfg.model.get("backbone")
    if held != asked:
        raise InputValueError(
            f"ckpt_path={path} holds a {held} model, but this run is for model.backbone="
            f"{asked}. Resume it with model.backbone={held} (and the run's other settings), "
            f"or start a new run from its backbone's weights: model.weights={path}"
        )
    stored = ckpt.get("pneumonia", {}).get("config") or {}
    changed = _changes(stored, cfg) if stored else []
    if changed and rank_zero_only.rank == 0:
        differences = "\n  ".join(changed)
        log.warning(
            "Resuming %s with settings that differ from its run's:\n  %s", path, differences
        )


def resume_command(output_dir: Path, overrides: list[str]) -> str | None:
    """The command that continues a stopped training run in its own folder (None when it has
    no last.ckpt yet)."""
    last = last_checkpoint(output_dir).resolve()
    if not last.is_file():
        return None
    kept = [
        o
        for o in overrides
        if o.split("=", 1)[0].lstrip("+~") not in ("ckpt_path", "hydra.run.dir")
    ]
    parts = ["python", "-m", "pneumonia.train", *kept, f"ckpt_path={last}",
             f"hydra.run.dir={output_dir.resolve()}"]  # fmt: skip
    return " ".join(shlex.quote(part) for part in parts)


def say_how_to_resume(output_dir: Path, what: str) -> None:
    """Log the exact command that continues a stopped run in its own folder, once there is a
    checkpoint to continue from."""
    if rank_zero_only.rank != 0:
        return
    arguments = []
    if HydraConfig.initialized():
        hydra_cfg = HydraConfig.get()
        arguments = [  # a --config-dir of the user's, then the overrides
            f"--config-dir={source.path.removeprefix('file://')}"
            for source in hydra_cfg.runtime.config_sources
            if source.provider == "command-line"
        ] + list(hydra_cfg.overrides.task)
    command = resume_command(output_dir, arguments)
    if command is None:
        log.warning("Training %s before its first epoch ended: nothing to resume.", what)
        return
    log.warning("Training %s. Continue it in the same run folder with:\n  %s", what, command)
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        log.warning(
            "Or continue the whole sweep, which runs no finished job again:\n  %s",
            sweep_command(sys.argv[1:], Path(HydraConfig.get().sweep.dir)),
        )


def sweep_command(argv: list[str], sweep_dir: Path) -> str:
    """The multirun command ``argv`` again, into its own sweep folder (``hydra.sweep.dir``):
    its finished jobs are skipped and its stopped ones continued (:func:`earlier_attempt`)."""
    kept = [a for a in argv if a.split("=", 1)[0] not in ("hydra.sweep.dir", "-m", "--multirun")]
    parts = [
        "python",
        "-m",
        "pneumonia.train",
        "-m",
        *kept,
        f"hydra.sweep.dir={sweep_dir.resolve()}",
    ]
    return " ".join(shlex.quote(part) for part in parts)


def link_resumed_run(ckpt_path: Path, output_dir: Path) -> None:
    """A run resumed into another folder than the checkpoint's says where it came from."""
    source = ckpt_path.expanduser().resolve().parent.parent
    if source == output_dir.resolve():
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    write_text(output_dir / "resumed_from.txt", f"{source}\n")
    log.warning(
        "Resuming the run in %s into a new folder %s (recorded in resumed_from.txt). Add "
        "hydra.run.dir=%s to continue in the run's own folder.",
        source,
        output_dir,
        source,
    )
