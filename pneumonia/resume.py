"""Stopping and resuming a training run: what a checkpoint may resume, the command that
continues a stopped run in its own folder, and the record a run resumed elsewhere leaves."""

from __future__ import annotations

import logging
import shlex
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_only

from pneumonia.config import flatten
from pneumonia.errors import InputValueError
from pneumonia.files import write_text

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
    writes to (checkpoints, logs) follow it, and are not what the experiment is."""
    run = str((config.get("paths") or {}).get("output_dir") or "\0")
    return {
        key: value.replace(run, "<run>") if isinstance(value, str) else value
        for key, value in flatten(config).items()
    }


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
    before = _settings(ckpt.get("pneumonia", {}).get("config") or {})
    now = _settings(OmegaConf.to_container(cfg, resolve=True))
    changed = [
        f"{key}: {before.get(key, '(absent)')} -> {now.get(key, '(absent)')}"
        for key in sorted(set(before) | set(now))
        if before and before.get(key) != now.get(key) and not key.startswith(_RESUME_MAY_CHANGE)
    ]
    if changed and rank_zero_only.rank == 0:
        differences = "\n  ".join(changed)
        log.warning(
            "Resuming %s with settings that differ from its run's:\n  %s", path, differences
        )


def resume_command(output_dir: Path, overrides: list[str]) -> str | None:
    """The command that continues a stopped training run in its own folder (None when it has
    no last.ckpt yet)."""
    last = (output_dir / "checkpoints" / "last.ckpt").resolve()
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
