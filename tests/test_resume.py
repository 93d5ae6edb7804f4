"""Resuming: a checkpoint resumes its own architecture, and a changed setting is named."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from pneumonia.runs.resume import check_resumable, resume_command

from .conftest import compose_train_cfg


def test_a_resume_with_changed_settings_names_each_one(
    tmp_path: Path, tiny_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    before = compose_train_cfg(tmp_path / "a", tiny_root, "model.lr=0.002")
    ckpt = {
        "hyper_parameters": {"backbone": before.model.backbone},
        "pneumonia": {"config": OmegaConf.to_container(before, resolve=True)},
    }
    same = compose_train_cfg(tmp_path / "b", tiny_root, "model.lr=0.002")  # other folders only
    check_resumable(ckpt, Path("last.ckpt"), same)
    assert "differ" not in caplog.text
    changed = compose_train_cfg(tmp_path / "c", tiny_root, "model.lr=0.0001", "seed=7")
    check_resumable(ckpt, Path("last.ckpt"), changed)
    assert "model/lr: 0.002 -> 0.0001" in caplog.text
    assert "seed: 42 -> 7" in caplog.text
    assert "paths/" not in caplog.text  # where the run writes is not the experiment


def test_a_run_recorded_before_max_upscale_existed_resumes_as_the_same_settings(
    tmp_path: Path, tiny_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Older runs' configs have no data.max_upscale: that stands for the default (4), so the
    run resumes, and its own sweep folder continues it; another value is a change."""
    recorded = OmegaConf.to_container(compose_train_cfg(tmp_path / "a", tiny_root), resolve=True)
    del recorded["data"]["max_upscale"]
    ckpt = {"hyper_parameters": {"backbone": "resnet18"}, "pneumonia": {"config": recorded}}
    check_resumable(ckpt, Path("last.ckpt"), compose_train_cfg(tmp_path / "b", tiny_root))
    assert "differ" not in caplog.text
    raised = compose_train_cfg(tmp_path / "c", tiny_root, "data.max_upscale=8")
    check_resumable(ckpt, Path("last.ckpt"), raised)
    assert "data/max_upscale: 4.0 -> 8" in caplog.text


def test_the_resume_command_keeps_the_config_folder_and_replaces_the_resume_keys(
    tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    assert resume_command(run, ["model.lr=0.1"]) is None  # no checkpoint yet: nothing to say
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"PK")
    args = ["--config-dir=/my conf", "model.lr=0.1", "ckpt_path=old.ckpt", "hydra.run.dir=x"]
    command = resume_command(run, args)
    assert command.startswith("python -m pneumonia.train '--config-dir=/my conf' model.lr=0.1 ")
    assert f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}" in command
    assert f"hydra.run.dir={run}" in command
    assert "old.ckpt" not in command
    assert "hydra.run.dir=x" not in command


def test_the_sweep_command_reruns_the_sweep_into_its_own_folder(tmp_path: Path) -> None:
    from pneumonia.runs.resume import sweep_command

    argv = ["-m", "model.lr=1e-3,1e-4", "hydra.sweep.dir=elsewhere", "data.fold=range(5)"]
    command = sweep_command(argv, tmp_path / "sweep")
    assert command == (
        "python -m pneumonia.train -m model.lr=1e-3,1e-4 'data.fold=range(5)' "
        f"hydra.sweep.dir={tmp_path / 'sweep'}"
    )
