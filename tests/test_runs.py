"""Finding runs: where the CLI writes them is where the notebook helpers look."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pneumonia.runs.folders import best_checkpoint, latest_run, runs_root

from .conftest import run_command, tiny_overrides


@pytest.mark.slow
def test_latest_run_finds_what_the_cli_wrote(
    tmp_path: Path, tiny_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PNEUMONIA_ROOT", str(tmp_path / "project"))
    # The run's own folders follow PNEUMONIA_ROOT: leave paths.root_dir to it.
    overrides = [o for o in tiny_overrides(tmp_path, tiny_root) if "paths.root_dir" not in o]
    result = subprocess.run(
        [sys.executable, "-m", "pneumonia.train", *overrides, "debug=fdr"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert runs_root() == tmp_path / "project" / "outputs" / "train" / "runs"
    run = latest_run()
    assert run.parent == runs_root()
    assert json.loads((run / "metrics.json").read_text())["test/num_samples"] == 8


def test_latest_run_is_the_newest_finished_one(tmp_path: Path) -> None:
    for name, finished in (("2026-01-01_10-00-00", True), ("2026-01-02_10-00-00", True)):
        (tmp_path / name / "checkpoints").mkdir(parents=True)
        if finished:
            (tmp_path / name / "metrics.json").write_text('{"best_model_path": null}')
    (tmp_path / "2026-01-03_10-00-00").mkdir()  # still running: no metrics.json yet
    assert latest_run(tmp_path).name == "2026-01-02_10-00-00"
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        best_checkpoint(latest_run(tmp_path))
    with pytest.raises(FileNotFoundError, match="No finished training run"):
        latest_run(tmp_path / "empty")


def test_an_unwritable_run_folder_stops_the_command_with_its_message_alone() -> None:
    # /proc refuses new folders even to root, as a read-only share refuses a user.
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pneumonia.predict",
            "ckpt_path=x.ckpt",
            "input=y",
            "hydra.run.dir=/proc/pneumonia_run",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        timeout=120,
    )
    assert out.returncode == 1
    assert "Error: The output folder /proc/pneumonia_run cannot be written" in out.stderr
    assert "hydra.run.dir=" in out.stderr
    for noise in ("Unable to configure handler", "Traceback", "raised RunFolderError"):
        assert noise not in out.stderr


def test_the_commands_check_their_output_folder_before_any_work(
    trained: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pneumonia.config import compose
    from pneumonia.export import export
    from pneumonia.predict import predict
    from pneumonia.runs.folders import RunFolderError

    blocked = tmp_path / "a_file"
    blocked.write_text("not a folder")
    for command in ("predict", "export"):  # no checkpoint is loaded, no image scored
        monkeypatch.setattr(f"pneumonia.{command}.load_checkpoint", lambda _: pytest.fail("work"))
    common = [f"ckpt_path={trained['ckpt']}", f"output_dir={blocked}"]
    with pytest.raises(RunFolderError, match=r"a_file cannot be written.*output_dir="):
        predict(compose("predict", [*common, f"input={trained['root']}"], output_dir=tmp_path))
    with pytest.raises(RunFolderError, match=r"a_file cannot be written.*output_dir="):
        export(compose("export", common, output_dir=tmp_path))
    assert blocked.read_text() == "not a folder"


def test_the_default_run_folder_is_unique_to_the_microsecond() -> None:
    import re

    from pneumonia.config import compose

    run_dir = compose("train").hydra.run.dir
    assert re.search(r"/train/runs/\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d\.\d{6}$", run_dir), run_dir


def test_a_notebook_below_the_launch_folder_finds_its_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A notebook's kernel starts in notebooks/; the runs are in ../outputs/train/runs."""
    from pneumonia.runs.folders import run_dir_from_env

    run = tmp_path / "outputs" / "train" / "runs" / "2026-01-02_10-00-00"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text("{}")
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    monkeypatch.delenv("PNEUMONIA_ROOT", raising=False)
    monkeypatch.delenv("PNEUMONIA_RUN_DIR", raising=False)
    assert run_dir_from_env() == run
    monkeypatch.setenv("PNEUMONIA_RUN_DIR", "outputs/train/runs/2026-01-02_10-00-00")
    assert run_dir_from_env().resolve() == run.resolve()  # relative to the launch folder
    monkeypatch.setenv("PNEUMONIA_RUN_DIR", "outputs/train/runs/gone")
    with pytest.raises(FileNotFoundError, match="PNEUMONIA_RUN_DIR=outputs/train/runs/gone"):
        run_dir_from_env()


def test_a_command_that_fails_before_writing_leaves_no_empty_run_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "failed"
    gone = [f"ckpt_path={tmp_path / 'gone.ckpt'}", f"input={tmp_path}"]
    code, err = run_command("predict", [*gone, f"hydra.run.dir={run}"])
    assert code != 0
    assert "gone.ckpt does not exist" in err  # the error still reaches the user
    assert not run.exists()  # not a folder of Hydra's config and a log of that error
    # A folder that holds something else is left alone.
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    run_command("predict", [*gone, f"hydra.run.dir={kept}"])
    assert (kept / "notes.txt").read_text() == "mine"
    assert (kept / ".hydra").is_dir()


def test_a_commands_output_dir_is_its_only_folder_and_has_one_owner(
    trained: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """predict (as evaluate and export) with output_dir= writes nothing under ./outputs of the
    folder it was started in (it made outputs/ inside the data folder), and a second command
    into the same folder is refused, the first one's files untouched."""
    data = tmp_path / "data"
    data.mkdir()
    image = sorted((trained["root"] / "test" / "NORMAL").iterdir())[0]
    (data / image.name).write_bytes(image.read_bytes())
    out = tmp_path / "out"
    monkeypatch.chdir(data)  # started among the images

    def predict() -> tuple[int, str]:
        args = [f"ckpt_path={trained['ckpt']}", f"input={data}", f"output_dir={out}",
                "precision=32-true", "accelerator=cpu"]  # fmt: skip
        return run_command("predict", args)

    first, err = predict()
    assert first == 0, err
    assert sorted(p.name for p in data.iterdir()) == [image.name]  # no outputs/ among the images
    (record,) = (out / "logs").iterdir()  # Hydra's log and config record, a folder per run
    assert record.name.startswith("predict_")
    assert (record / ".hydra" / "config.yaml").is_file()
    assert (record / "predict.log").is_file()
    written = (out / "predictions.csv").read_bytes()
    second, err = predict()
    assert second != 0
    assert f"The folder {out} holds an earlier predict's predictions.csv" in err
    assert "Traceback" not in err
    assert (out / "predictions.csv").read_bytes() == written


def test_a_folder_another_live_command_holds_is_refused(tmp_path: Path) -> None:
    import socket

    from omegaconf import OmegaConf

    from pneumonia.runs.folders import RunFolderError
    from pneumonia.runs.owners import LOCK, command_folder

    cfg = OmegaConf.create({"output_dir": str(tmp_path), "paths": {"output_dir": "unused"}})
    (tmp_path / LOCK).write_text(f"{os.getppid()}@{socket.gethostname()}")
    held = pytest.raises(RunFolderError, match=rf"held by another command .*{os.getppid()}")
    with held, command_folder(cfg, "evaluate"):
        pass
    (tmp_path / LOCK).write_text("999999999@" + socket.gethostname())  # dead
    with command_folder(cfg, "evaluate") as folder:  # a dead process's lock is taken over
        assert (folder / LOCK).read_text().startswith(f"{os.getpid()}@")
    assert not (tmp_path / LOCK).exists()
