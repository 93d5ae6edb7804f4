"""A job run again in its own folder continues: a sweep killed part-way and run again skips
the job that finished and resumes the one that was killed from its last.ckpt."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import REPO_ROOT, compose_train_cfg, tiny_overrides


@pytest.mark.slow
def test_a_sweep_killed_part_way_completes_when_run_again(tmp_path: Path, tiny_root: Path):
    sweep = tmp_path / "sweep"
    marker = tmp_path / "killed.txt"
    command = [
        sys.executable, "-m", "pneumonia.train", "-m", *tiny_overrides(
            tmp_path, tiny_root,
            "model=resnet18", "model.lr=1e-3,3e-4", "trainer.max_epochs=3",
            "trainer.limit_train_batches=2", "test=false", "checks.enabled=false",
            "shift.enabled=false", f"hydra.sweep.dir={sweep}",
            "+callbacks.kill._target_=tests.killers.KillOnce", f"+callbacks.kill.marker={marker}",
            "+callbacks.kill.job=1", "+callbacks.kill.this_job=${hydra:job.num}",
        ),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(REPO_ROOT)}

    def run() -> subprocess.CompletedProcess:
        return subprocess.run(
            command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )

    killed = run()
    assert killed.returncode == -9, killed.stderr[-2000:]  # SIGKILL, in job 1's second epoch
    finished = sweep / "0" / "metrics.json"
    assert finished.is_file()
    assert not (sweep / "1" / "metrics.json").exists()
    stopped = torch.load(sweep / "1" / "checkpoints" / "last.ckpt", weights_only=True)
    assert stopped["epoch"] == 0
    before = finished.read_text(), finished.stat().st_mtime_ns

    again = run()  # the same command
    assert again.returncode == 0, again.stderr[-3000:]
    assert (finished.read_text(), finished.stat().st_mtime_ns) == before  # not run twice
    assert "not run again" in (sweep / "0" / "train.log").read_text()
    log = (sweep / "1" / "train.log").read_text()
    assert f"continuing from {sweep / '1' / 'checkpoints' / 'last.ckpt'}" in log
    done = torch.load(sweep / "1" / "checkpoints" / "last.ckpt", weights_only=True)
    assert done["epoch"] == 2  # three epochs in all: one before the kill, two after
    assert done["global_step"] == 3 * 2
    # one run folder per job, each with its own setting and checkpoints
    assert sorted(p.name for p in sweep.glob("[0-9]*")) == ["0", "1"]
    for job, lr in (("0", 1e-3), ("1", 3e-4)):
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        assert metrics["best_model_path"].startswith(str(sweep / job))
        config = OmegaConf.load(sweep / job / ".hydra" / "config.yaml")
        assert config.model.lr == pytest.approx(lr)


def test_a_folder_of_other_settings_is_refused_with_the_differences(
    tmp_path: Path, tiny_root: Path
) -> None:
    from pneumonia.runs.folders import RunFolderError
    from pneumonia.runs.resume import earlier_attempt
    from pneumonia.train import train

    quick = ["model=resnet18", "trainer.limit_train_batches=2", "test=false",
             "checks.enabled=false", "shift.enabled=false"]  # fmt: skip
    first = compose_train_cfg(tmp_path, tiny_root, *quick)
    metrics = train(first)
    folder = Path(first.paths.output_dir)
    same = compose_train_cfg(tmp_path, tiny_root, *quick, "trainer.precision=bf16-mixed",
                             "data.num_workers=1")  # fmt: skip
    assert earlier_attempt(folder, same).metrics == metrics  # what a rerun may change: the same
    other = compose_train_cfg(tmp_path, tiny_root, *quick, "model.lr=0.0123")
    with pytest.raises(RunFolderError, match=r"other settings:\n  model/lr: .* -> 0\.0123"):
        train(other)
    assert json.loads((folder / "metrics.json").read_text()) == metrics
