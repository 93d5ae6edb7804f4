"""Training launched as several processes: torchrun's ranks (gloo on the CPU) share one run
folder that rank 0 alone writes, and their metrics are those of one process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import REPO_ROOT, tiny_overrides


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONWARNINGS": "ignore", "HYDRA_FULL_ERROR": "1",
            "PYTHONPATH": str(REPO_ROOT), **extra}  # fmt: skip


def _launch_env(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    for name in ("TORCHELASTIC_RUN_ID", "SLURM_STEP_ID", "SLURM_PROCID", "RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def test_the_ranks_of_a_launch_compose_one_run_folder_and_their_own_logs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pneumonia.config import compose

    def composed(**env: str):
        _launch_env(monkeypatch, **env)
        cfg = compose("train", ["trainer=ddp"])
        suffix = OmegaConf.create({"log": "train${pneumonia.rank_suffix:}.log"}).log
        return cfg.hydra.run.dir, cfg.hydra.output_subdir, suffix, cfg

    torchrun = {"TORCHELASTIC_RUN_ID": "abc", "LOCAL_WORLD_SIZE": "2", "GROUP_WORLD_SIZE": "1"}
    rank0 = composed(**torchrun, RANK="0")
    rank1 = composed(**torchrun, RANK="1")
    assert rank0[0] == rank1[0]  # one folder, named by torchrun's start, not each rank's clock
    assert (rank0[1], rank1[1]) == (".hydra", None)  # rank 0 alone records the config
    assert (rank0[2], rank1[2]) == ("train.log", "train_rank1.log")  # a log file per rank
    handler = OmegaConf.to_container(rank1[3].hydra.job_logging.handlers.file)
    assert handler["filename"].endswith("${hydra.job.name}${pneumonia.rank_suffix:}.log")
    assert (rank1[3].trainer.devices, rank1[3].trainer.num_nodes) == (2, 1)

    srun = {"SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "8", "SLURM_STEP_NUM_NODES": "2"}
    with pytest.raises(Exception, match=r"spans 2 nodes.*hydra\.run\.dir="):
        composed(**srun, SLURM_PROCID="5")
    _launch_env(monkeypatch, **srun, SLURM_PROCID="5")
    given = compose("train", ["trainer=ddp", "hydra.run.dir=/shared/runs/42"])
    assert given.hydra.run.dir == "/shared/runs/42"
    assert (given.trainer.devices, given.trainer.num_nodes) == (4, 2)

    alone = [composed()[0] for _ in range(2)]
    assert alone[0] != alone[1]  # one process alone: its own folder, to the microsecond
    assert composed()[3].trainer.devices == 2


@pytest.mark.slow
def test_torchrun_ranks_share_one_folder_rank_0_writes_with_single_process_metrics(
    tmp_path: Path, tiny_root: Path
) -> None:
    """Two gloo ranks under torchrun, the entry point a cluster uses, with no hydra.run.dir:
    one run folder; metrics.json, checkpoints and TensorBoard written by rank 0 alone; the
    validation metrics equal one process's evaluation of the best checkpoint."""
    from pneumonia.decision.metrics import metrics_at
    from pneumonia.evaluation import score
    from pneumonia.models.checkpoint import load_checkpoint

    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2",
        "-m", "pneumonia.train", *tiny_overrides(
            tmp_path, tiny_root, "trainer=ddp", "model=resnet18",
            "trainer.limit_train_batches=2", "test=false", "checks.enabled=false",
            "shift.enabled=false",
        ),
    ]  # fmt: skip
    done = subprocess.run(
        command, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    runs = sorted((tmp_path / "outputs" / "train" / "runs").iterdir())
    assert len(runs) == 1, runs  # one run folder per job, whatever the number of ranks
    run = runs[0]
    logs = {name: (run / name).read_text() for name in ("train.log", "train_rank1.log")}
    pids = {}
    for name, text in logs.items():
        found = re.search(r"Rank (\d) of 2 \(torchrun, 1 node\(s\)\), process (\d+)", text)
        assert found, f"{name} does not say which rank wrote it:\n{text[:2000]}"
        pids[int(found[1])] = int(found[2])
    assert set(pids) == {0, 1}
    assert pids[0] != pids[1]
    # TensorBoard names each event file ...<host>.<pid>.<n> after its writer: rank 0 alone
    writers = {int(p.name.split(".")[-2]) for p in (run / "tensorboard").glob("events.out.*")}
    assert writers == {pids[0]}
    assert "Metrics:" in logs["train.log"]
    assert "Metrics:" not in logs["train_rank1.log"]
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / ".hydra" / "config.yaml").is_file()

    metrics = json.loads((run / "metrics.json").read_text())
    ckpt = load_checkpoint(metrics["best_model_path"])
    alone = score(ckpt, "val", device=torch.device("cpu"), precision="32-true")
    assert metrics["val/num_samples"] == len(alone.files)
    expected = metrics_at(alone.probs, alone.targets, alone.threshold)
    for name in ("accuracy", "recall", "specificity"):
        assert metrics[f"val/{name}"] == pytest.approx(expected[name], abs=1e-6), name
    pos, neg = alone.probs[alone.targets == 1], alone.probs[alone.targets == 0]
    pairs = (pos[:, None] > neg[None, :]).float() + 0.5 * (pos[:, None] == neg[None, :]).float()
    assert metrics["val/auroc"] == pytest.approx(pairs.mean().item(), abs=1e-5)
