"""Lightning callbacks that stop a training job the hard way, for the tests of reruns and
requeues (they run inside the jobs that the tests launch: ``+callbacks.kill._target_=...``)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytorch_lightning as pl


class KillOnce(pl.Callback):
    """SIGKILL this process (no handler, no cleanup: a machine lost, an OOM kill) when job
    ``job`` starts epoch ``epoch``, once: ``marker`` records it, and a rerun goes on."""

    def __init__(self, marker: str, job: int, this_job: int, epoch: int = 1) -> None:
        self.marker, self.job, self.this_job, self.epoch = Path(marker), job, this_job, epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        now = self.this_job == self.job and trainer.current_epoch == self.epoch
        if now and not self.marker.exists():
            self.marker.write_text(f"killed job {self.job} at epoch {self.epoch}\n")
            os.kill(os.getpid(), signal.SIGKILL)


class WaitAtEpoch(pl.Callback):
    """Job ``job`` waits at the start of epoch ``epoch`` until ``release`` exists, once:
    ``waiting`` says it waits, with its process and SLURM job id (so that a test can requeue the
    job there); a rerun finds ``release`` and goes on."""

    def __init__(
        self, waiting: str, release: str, epoch: int = 1, job: int = 0, this_job: int = 0,
        limit_s: float = 120,
    ) -> None:  # fmt: skip
        self.waiting, self.release = Path(waiting), Path(release)
        self.epoch, self.job, self.this_job, self.limit_s = epoch, job, this_job, limit_s

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.this_job != self.job or trainer.current_epoch != self.epoch:
            return
        if self.release.exists():
            return
        job_id = os.environ.get("SLURM_JOB_ID", "")
        if "SLURM_ARRAY_JOB_ID" in os.environ:  # a task of a job array: <array>_<task>
            job_id = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
        self.waiting.write_text(f"{os.getpid()} {job_id}\n")
        deadline = time.monotonic() + self.limit_s
        while not self.release.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
