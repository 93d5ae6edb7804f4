"""hydra/launcher=slurm against a real SLURM: Debian's slurm-wlm and munge on this machine, as
one node (``sudo scripts/local_slurm.sh``, which CI runs). Skipped where sbatch is absent."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import REPO_ROOT, tiny_overrides

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def slurm() -> str:
    """The partition of a SLURM that answers (its default)."""
    if shutil.which("sbatch") is None:
        pytest.skip(
            "sbatch not found: no SLURM here. A one-node SLURM on this machine: "
            "sudo scripts/local_slurm.sh (Debian's slurm-wlm and munge; CI runs it)"
        )
    found = subprocess.run(["sinfo", "--noheader", "--format=%P %a %t"], capture_output=True,
                           text=True, timeout=30)  # fmt: skip
    up = [line.split() for line in found.stdout.splitlines() if " up " in f" {line} "]
    assert found.returncode == 0 and up, (  # noqa: PT018  (a SLURM that is there must work)
        f"SLURM is installed but does not answer ({found.stderr.strip() or found.stdout}): "
        "start it with sudo scripts/local_slurm.sh"
    )
    return up[0][0].rstrip("*")


def _sweep(tmp_path: Path, tiny_root: Path, partition: str, *overrides: str) -> list[str]:
    return [
        sys.executable, "-m", "pneumonia.train", "-m", *tiny_overrides(
            tmp_path, tiny_root,
            "hydra/launcher=slurm", f"hydra.launcher.partition={partition}",
            "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1",
            "hydra.launcher.timeout_min=10", "model=resnet18", "trainer.limit_train_batches=2",
            "test=false", "checks.enabled=false", "shift.enabled=false", *overrides,
        ),
    ]  # fmt: skip


def _env() -> dict[str, str]:
    # sbatch passes the submitting environment on: the jobs import this checkout
    return {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(REPO_ROOT)}


def test_a_sweep_runs_as_slurm_jobs_and_a_requeued_job_resumes_from_last_ckpt(
    tmp_path: Path, tiny_root: Path, slurm: str
) -> None:
    """A 2-job sweep through the launcher, waited for. Job 1 is requeued (``scontrol requeue``)
    in its second epoch: SLURM stops it and starts it again, and it continues from the
    last.ckpt of its first epoch instead of starting over."""
    sweep, waiting, release = tmp_path / "sweep", tmp_path / "waiting", tmp_path / "release"
    command = _sweep(
        tmp_path, tiny_root, slurm, "model.lr=1e-3,1e-4", "trainer.max_epochs=2",
        f"hydra.sweep.dir={sweep}", "+callbacks.wait._target_=tests.killers.WaitAtEpoch",
        f"+callbacks.wait.waiting={waiting}", f"+callbacks.wait.release={release}",
        "+callbacks.wait.job=1", "+callbacks.wait.this_job=${hydra:job.num}",
    )  # fmt: skip
    launcher = subprocess.Popen(command, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not waiting.exists():
            assert launcher.poll() is None, launcher.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "job 1 never reached its second epoch"
            time.sleep(0.5)
        pid, job_id = waiting.read_text().split()
        stopped = torch.load(sweep / "1" / "checkpoints" / "last.ckpt", weights_only=True)
        assert stopped["epoch"] == 0
        requeue = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
        assert requeue.returncode == 0, requeue.stderr
        while _alive(int(pid)):  # SLURM stopped the first attempt ...
            assert time.monotonic() < deadline, "scontrol requeue did not stop the job"
            time.sleep(0.2)
        _start_now(job_id, deadline)
        release.touch()  # ... and the second one goes on past the second epoch
        output, _ = launcher.communicate(timeout=300)
    finally:
        launcher.kill()
    assert launcher.returncode == 0, output[-3000:]

    ids, lrs = set(), []
    for job in ("0", "1"):
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        assert metrics["best_model_path"].startswith(str(sweep / job))
        hydra = yaml.safe_load((sweep / job / ".hydra" / "hydra.yaml").read_text())["hydra"]
        ids.add(hydra["job"]["id"])  # submitit's: the SLURM job id, array task included
        config = yaml.safe_load((sweep / job / ".hydra" / "config.yaml").read_text())
        lrs.append(config["model"]["lr"])
    assert len(ids) == 2
    assert job_id in ids
    for each in ids:  # each job ran in SLURM, and submitit kept its logs under the sweep
        assert (sweep / ".submitit" / each / f"{each}_0_log.out").is_file()
    assert sorted(lrs) == [1e-4, 1e-3]

    log = (sweep / "1" / "train.log").read_text()
    assert f"continuing from {sweep / '1' / 'checkpoints' / 'last.ckpt'}" in log
    assert "continuing from" not in (sweep / "0" / "train.log").read_text()
    done = torch.load(sweep / "1" / "checkpoints" / "last.ckpt", weights_only=True)
    assert done["epoch"] == 1
    assert done["global_step"] == 2 * 2  # one epoch before the requeue, one after it


def _start_now(job_id: str, deadline: float) -> None:
    """SLURM holds a requeued job back for two minutes (its BeginTime): as an admin may, let it
    start now, once it is pending again."""
    while True:
        state = subprocess.run(["squeue", "--noheader", "-j", job_id, "-o", "%T"],
                               capture_output=True, text=True).stdout.strip()  # fmt: skip
        if state == "PENDING":
            subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True)
            return
        assert time.monotonic() < deadline, f"job {job_id} is {state}, not pending again"
        time.sleep(0.2)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
