"""Sweeps beyond one process: jobs side by side on one machine (hydra/launcher=local) and one
Optuna study shared by several workers through a storage (hydra.sweeper.storage=sqlite:///...).

One scene serves every test here: two workers started together on one SQLite study, each
running its 2 trials side by side through the local launcher (4 trainings on tiny images)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from tests.conftest import REPO_ROOT, tiny_overrides

STUDY = "pneumonia"  # study_name of conf/hparams_search/optuna.yaml
TRIALS_PER_WORKER = 2
# A seed of its own per worker: with one seed, every worker's sampler draws the same values
# (seen: both workers' first trials had the same model.lr, weight_decay and label_smoothing).
WORKERS = {"a": 1, "b": 2}
# What the search varies under tiny_overrides (which fixes data.batch_size, so Optuna does not).
SEARCHED = ("model.lr", "model.weight_decay", "model.label_smoothing")
FAST = (
    "model=resnet18",
    "trainer.limit_train_batches=2",
    "test=false",
    "checks.enabled=false",
    "shift.enabled=false",
)
# Every line of a job's log says which process wrote it, and when.
JOB_LOG_FORMAT = "[%(asctime)s][pid %(process)d] %(message)s"
JOB_LOG_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]\[pid (\d+)\]")


def _optuna_cli(*args: str) -> subprocess.CompletedProcess:
    """The `optuna` command (its entry point, wherever the environment put the script)."""
    code = "import sys; from optuna.cli import main; sys.exit(main())"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory, tiny_root: Path) -> dict:
    """Two `python -m pneumonia.train hparams_search=optuna hydra/launcher=local` workers, run
    at the same time on one SQLite study, each with a sweep folder of its own."""
    tmp = tmp_path_factory.mktemp("sweeps")
    storage = f"sqlite:///{tmp / 'study.db'}"
    # The study first, as the README says: workers that meet on a fresh storage race to create
    # its tables, and one of them dies ("table studies already exists").
    made = _optuna_cli(
        "create-study", "--study-name", STUDY, "--storage", storage,
        "--direction", "minimize", "--skip-if-exists",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr[-3000:]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "HYDRA_FULL_ERROR": "1",
           "PYTHONPATH": str(REPO_ROOT)}  # fmt: skip
    workers: dict[str, subprocess.Popen] = {}
    outputs = {name: tmp / f"worker_{name}.out" for name in WORKERS}
    try:
        for name, seed in WORKERS.items():
            command = [
                sys.executable, "-m", "pneumonia.train",
                *tiny_overrides(tmp, tiny_root, *FAST),
                "hparams_search=optuna",
                f"hydra.sweeper.storage={storage}",
                f"hydra.sweeper.n_trials={TRIALS_PER_WORKER}",
                f"hydra.sweeper.sampler.n_startup_trials={TRIALS_PER_WORKER}",
                f"hydra.sweeper.sampler.seed={seed}",
                "hydra/launcher=local",
                "hydra.launcher.n_jobs=2",
                f"hydra.sweep.dir={tmp / name}",
                f"hydra.job_logging.formatters.simple.format='{JOB_LOG_FORMAT}'",
            ]  # fmt: skip
            # Output to files, not pipes: a full pipe would stall a worker while the test waits
            # on the other one, and the two would no longer run together.
            with outputs[name].open("w") as out:
                workers[name] = subprocess.Popen(
                    command, cwd=tmp, env=env, stdout=out, stderr=subprocess.STDOUT
                )
        for process in workers.values():
            process.wait(timeout=300)
    finally:
        for process in workers.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    for name, process in workers.items():
        assert process.returncode == 0, outputs[name].read_text()[-3000:]
    return {
        "storage": storage,
        "pids": {name: process.pid for name, process in workers.items()},
        "jobs": {name: sorted((tmp / name).glob("[0-9]*")) for name in WORKERS},
    }


def _searched_params(job: Path) -> dict[str, float]:
    """The searched values of a job, as the sweeper asked for them (overrides.yaml)."""
    overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
    pairs = dict(o.split("=", 1) for o in overrides)
    return {key: float(pairs[key]) for key in SEARCHED}


def _log_lines(job: Path) -> list[tuple[datetime, int]]:
    """(time, process id) of every line of the job's log."""
    lines = []
    for line in (job / "train.log").read_text().splitlines():
        if match := JOB_LOG_LINE.match(line):
            lines.append((datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f"), int(match[2])))
    return lines


def _overlap(*intervals: tuple[datetime, datetime]) -> bool:
    return max(start for start, _ in intervals) < min(end for _, end in intervals)


# optuna 2.x on SQLAlchemy 1.4 (pinned: see the optuna extra) warns about SQLAlchemy 2.0.
@pytest.mark.filterwarnings("ignore:Deprecated API features detected")
@pytest.mark.slow
def test_workers_on_one_study_never_run_a_trial_twice(two_workers: dict) -> None:
    import optuna

    study = optuna.load_study(study_name=STUDY, storage=two_workers["storage"])
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == TRIALS_PER_WORKER * len(WORKERS)
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)

    jobs = [job for name in WORKERS for job in two_workers["jobs"][name]]
    assert [[job.name for job in two_workers["jobs"][name]] for name in WORKERS] == [
        ["0", "1"],
        ["0", "1"],
    ]
    searched = {job: _searched_params(job) for job in jobs}
    worker_of = {job: name for name in WORKERS for job in two_workers["jobs"][name]}
    ran: dict[Path, optuna.trial.FrozenTrial] = {}
    for trial in trials:
        matches = [job for job, params in searched.items() if params == trial.params]
        assert len(matches) == 1, (trial.number, trial.params, matches)
        job = matches[0]
        config = OmegaConf.load(job / ".hydra" / "config.yaml")
        assert {key: OmegaConf.select(config, key) for key in SEARCHED} == trial.params
        assert json.loads((job / "metrics.json").read_text())["val/loss"] == trial.value
        ran[job] = trial
    assert set(ran) == set(jobs)  # every job is one trial, every trial one job

    # The two workers used the study at the same time (else sharing it would prove nothing).
    spans = {
        name: (
            min(t.datetime_start for job, t in ran.items() if worker_of[job] == name),
            max(t.datetime_complete for job, t in ran.items() if worker_of[job] == name),
        )
        for name in WORKERS
    }
    assert _overlap(*spans.values()), spans


@pytest.mark.slow
def test_local_launcher_runs_a_workers_jobs_side_by_side(two_workers: dict) -> None:
    every_pid = set()
    for name in WORKERS:
        jobs = two_workers["jobs"][name]
        assert all((job / "metrics.json").is_file() for job in jobs)
        lines = {job: _log_lines(job) for job in jobs}
        pids = {job: {pid for _, pid in lines[job]} for job in jobs}
        assert all(len(p) == 1 for p in pids.values()), pids  # one process per job...
        job_pids = set().union(*pids.values())
        assert len(job_pids) == len(jobs), pids  # ... each job its own ...
        assert two_workers["pids"][name] not in job_pids  # ... none of them the worker itself
        every_pid |= job_pids
        # and they ran at the same time: one after the other, the second would start after
        # the first one's last line.
        spans = [(lines[job][0][0], lines[job][-1][0]) for job in jobs]
        assert _overlap(*spans), spans
    assert len(every_pid) == TRIALS_PER_WORKER * len(WORKERS)


def test_a_sweeps_tools_are_checked_before_its_first_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No SLURM on the machine, an Optuna storage that cannot be opened, and a shared study of
    the other direction: each a message of ours before any job (they were tracebacks from
    submitit, SQLAlchemy and Optuna)."""
    import shutil

    import optuna

    from pneumonia.config import compose
    from pneumonia.runs.preflight import SweepSetupError, check_sweep

    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(SweepSetupError, match="sbatch, srun, squeue this machine does not have"):
        check_sweep(compose("train", ["hydra/launcher=slurm"]))
    monkeypatch.undo()
    gone = f"sqlite:///{tmp_path / 'no' / 'such' / 'folder' / 'study.db'}"
    with pytest.raises(SweepSetupError, match="cannot be opened .*OperationalError"):
        check_sweep(compose("train", ["hparams_search=optuna", f"hydra.sweeper.storage={gone}"]))
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.create_study(study_name="pneumonia", storage=storage, direction="maximize")
    search = ["hparams_search=optuna", f"hydra.sweeper.storage={storage}"]
    with pytest.raises(SweepSetupError, match="created to maximize, and this search would minim"):
        check_sweep(compose("train", search))  # val/nll, minimised by default
    check_sweep(compose("train", [*search, "callbacks.model_checkpoint.mode=max"]))
