"""A sweep's tools checked before its first job: the SLURM commands a ``hydra/launcher=slurm``
sweep submits with, and the Optuna storage a shared search meets in. Without these checks a
sweep failed in submitit or SQLAlchemy, with a traceback and their advice, not ours.

Called by the :class:`~pneumonia.runs.folders.RunFolder` callback when a multirun starts.
"""

from __future__ import annotations

import shutil
from typing import Any

from omegaconf import OmegaConf

from pneumonia.errors import UserError

SLURM_COMMANDS = ("sbatch", "srun", "squeue")


class SweepSetupError(UserError, RuntimeError):
    """A launcher or sweeper that cannot work on this machine, as configured."""


def check_sweep(config: Any) -> None:
    """Raises SweepSetupError naming what is missing and the way forward."""
    launcher = str(OmegaConf.select(config, "hydra.launcher._target_", default="") or "")
    if launcher.endswith("SlurmLauncher"):
        missing = [c for c in SLURM_COMMANDS if shutil.which(c) is None]
        if missing:
            raise SweepSetupError(
                f"hydra/launcher=slurm submits each job with SLURM, whose {', '.join(missing)} "
                "this machine does not have on its PATH. Start the sweep on the cluster's login "
                "node, or run its jobs here: hydra/launcher=local (side by side) or no "
                "hydra/launcher (one after another)."
            )
    sweeper = OmegaConf.select(config, "hydra.sweeper", default=None) or {}
    if str(sweeper.get("_target_", "")).endswith("OptunaSweeper") and sweeper.get("storage"):
        _check_storage(str(sweeper.storage), str(sweeper.study_name), sweeper.direction)


def _check_storage(url: str, study_name: str, direction: Any) -> None:
    import optuna

    where = f"hydra.sweeper.storage={url}"
    try:
        storage = optuna.storages.get_storage(url)
    except Exception as e:  # SQLAlchemy's, a missing driver's ...
        cause = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        raise SweepSetupError(
            f"{where} cannot be opened ({cause}). SQLite: sqlite:///study.db is relative to "
            "the folder the command runs in, sqlite:////abs/path/study.db absolute, and the "
            "folder must exist and be writable. A database server's URL needs its driver "
            "(postgresql: pip install psycopg2-binary). Workers that meet on a fresh storage "
            "race to create it: create the study first (optuna create-study --study-name "
            f"{study_name} --storage {url} --direction ... --skip-if-exists)."
        ) from None
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        return  # no such study yet: the sweeper creates it
    wanted = [str(d) for d in (direction if OmegaConf.is_list(direction) else [direction])]
    have = [d.name.lower() for d in study.directions]
    if have != wanted:
        raise SweepSetupError(
            f"The study {study_name!r} in {url} was created to {' and '.join(have)}, and this "
            f"search would {' and '.join(wanted)} (hydra.sweeper.direction follows "
            "callbacks.model_checkpoint.mode). Use the study's direction, or another study: "
            "hydra.sweeper.study_name=..."
        )
