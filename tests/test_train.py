"""train(cfg) end to end on tiny generated data: outputs, TensorBoard, resume, sweeps, DDP."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException, InstantiationException
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import pneumonia.models.classifier as model_module
from pneumonia.data import ChestXRayDataModule, DataLayoutError
from pneumonia.models.checkpoint import load_checkpoint
from pneumonia.train import train

from .conftest import REPO_ROOT, compose_train_cfg, tiny_overrides

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def read_tensorboard(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    return acc.Reload()


def val_split_size(cfg) -> int:
    dm = ChestXRayDataModule(
        root=cfg.data.root,
        cache_dir=cfg.data.cache_dir,
        val_fraction=cfg.data.val_fraction,
        seed=cfg.seed,
        resize_size=cfg.data.resize_size,
        crop_size=cfg.data.crop_size,
    )
    dm.setup("fit")
    return len(dm.files("val"))


@pytest.mark.slow
def test_two_epoch_demo_run_leaves_everything_it_promises(tmp_path: Path, tiny_root: Path) -> None:
    cfg = compose_train_cfg(tmp_path, tiny_root, "trainer.max_epochs=2", figures=True)
    metrics = train(cfg)
    run = Path(cfg.paths.output_dir)

    saved = json.loads((run / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    for key in (
        "val/auroc",
        "val/f1",
        "val/loss",
        "test/f1",
        "test/specificity",
        "test/auroc",
        "test/f1@0.5",
        "test/accuracy@0.5",
        "test/average_precision",
        "threshold",
    ):
        assert key in saved, key
    n_test = len(list((tiny_root / "test").rglob("*.jpeg")))
    assert saved["test/num_samples"] == n_test
    assert saved["val/num_samples"] == val_split_size(cfg)
    (tn, fp), (fn, tp) = saved["test/confusion_matrix"]
    assert tn + fp + fn + tp == n_test
    assert saved["test/accuracy"] == pytest.approx((tn + tp) / n_test, abs=1e-6)
    assert saved["test/recall"] == pytest.approx(tp / max(1, tp + fn), abs=1e-6)
    assert saved["test/threshold"] == pytest.approx(saved["threshold"])

    best = Path(saved["best_model_path"])
    assert best.parent == run / "checkpoints"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    ckpt = torch.load(best, map_location="cpu", weights_only=True)  # no pickled objects
    assert float(ckpt["state_dict"]["threshold"]) == pytest.approx(saved["threshold"])
    assert ckpt["hyper_parameters"]["class_names"] == ["NORMAL", "PNEUMONIA"]
    assert ckpt["pneumonia"]["config"]["model"]["backbone"] == "resnet18"
    # Each fact once: no copies of the threshold, classes, decision or preprocessing; and the
    # best checkpoint carries the shift reference of its weights.
    assert set(ckpt["pneumonia"]) == {
        "format",
        "preprocessing",
        "config",
        "shift",
        "thresholds",
        "class_probabilities",
    }
    assert not {"resize_size", "crop_size", "mean"} & set(ckpt["datamodule_hyper_parameters"])
    assert (run / "confusion_matrix.png").stat().st_size > 1000
    assert (run / "roc.png").stat().st_size > 1000

    tb = read_tensorboard(run)
    scalars = set(tb.Tags()["scalars"])
    for tag in (
        "train/loss_step",
        "train/loss_epoch",
        "train/auroc",
        "val/loss",
        "val/auroc",
        "val/specificity",
        "val/threshold",
        "test/f1",
        "test/f1@0.5",
        "lr-AdamW",
        "hp/test/f1",
        "hp/val/auroc",
        "val/sensitivity_at_specificity_95",
        "val/specificity_at_sensitivity_90",
    ):
        assert tag in scalars, tag
    assert len(tb.Scalars("val/loss")) == 2 + 1  # two epochs, then the best checkpoint again
    assert tb.Scalars("hp/test/f1")[-1].value == pytest.approx(saved["test/f1"], abs=1e-6)
    images = set(tb.Tags()["images"])
    assert {
        "val/confusion_matrix",
        "val/roc",
        "val/reliability",
        "test/confusion_matrix",
        "test/roc",
        "train/augmented_samples",
    } <= images
    hparams = tb.PluginTagToContent("hparams")
    assert hparams  # the HParams tab's session data
    assert any(b"model/lr" in blob for blob in hparams.values())


class KeepsItself(model_module.PneumoniaClassifier):
    """The module of the last run, to look at what it decided."""

    last = None

    def on_fit_start(self) -> None:
        KeepsItself.last = self


def test_fast_dev_run_of_each_experiment(tmp_path: Path, tiny_root: Path) -> None:
    from pneumonia.decision.rules import choose_threshold

    for experiment in sorted(p.stem for p in (REPO_ROOT / "conf" / "experiment").glob("*.yaml")):
        cfg = compose_train_cfg(  # each run its own folder
            tmp_path / experiment,
            tiny_root,
            f"experiment={experiment}",
            "debug=fdr",
            "model.weights=null",
            "data.resize_size=40",
            "data.crop_size=32",
            "data.batch_size=8",
            "data.eval_batch_size=8",
            "trainer.precision=32-true",
        )
        cfg.model._target_ = f"{__name__}.KeepsItself"
        metrics = train(cfg)
        assert metrics["test/num_samples"] == 8, experiment  # one test batch of 8
        # The threshold is what the experiment's rule makes of the validation predictions.
        rule = cfg.model.threshold_rule
        assert metrics["decision"]["threshold_rule"] == rule, experiment
        val = KeepsItself.last.epoch_predictions["val"]
        expected = choose_threshold(
            val.probs,
            val.targets,
            rule,
            target_sensitivity=cfg.model.target_sensitivity,
            cost_ratio=cfg.model.cost_ratio,
        )
        assert metrics["threshold"] == pytest.approx(expected), experiment


def test_model_lr_override_works_as_typed(train_cfg) -> None:
    cfg = train_cfg("model.lr=1e-4", "debug=fdr", "model.scheduler=none")
    assert cfg.model.lr == 1e-4
    seen = {}

    class Spy(model_module.PneumoniaClassifier):
        def configure_optimizers(self):
            out = super().configure_optimizers()
            seen["lr"] = out["optimizer"].param_groups[0]["lr"]
            return out

    cfg.model._target_ = f"{__name__}.Spy"
    globals()["Spy"] = Spy
    train(cfg)
    assert seen["lr"] == 1e-4


class ConstantValLoss(model_module.PneumoniaClassifier):
    """A validation loss that never improves: ReduceLROnPlateau must step the rate down."""

    def _step(self, batch):
        loss, scores, probs, targets = super()._step(batch)
        return (loss if self.training else loss.detach() * 0 + 1.0), scores, probs, targets


@pytest.mark.parametrize("scheduler", ["cosine", "onecycle", "plateau"])
def test_schedulers_step(train_cfg, scheduler: str) -> None:
    # plateau (patience 2) lowers the rate after the third epoch without improvement.
    epochs = 5 if scheduler == "plateau" else 2
    cfg = train_cfg(
        f"model.scheduler={scheduler}",
        f"trainer.max_epochs={epochs}",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "test=false",
        "checks.enabled=false",
        "callbacks.lr_monitor.logging_interval=step",
    )
    if scheduler == "plateau":
        cfg.model._target_ = f"{__name__}.ConstantValLoss"
    train(cfg)
    lrs = [e.value for e in read_tensorboard(Path(cfg.paths.output_dir)).Scalars("lr-AdamW")]
    assert len(lrs) == 2 * epochs  # every step's rate
    if scheduler == "plateau":
        assert lrs[:8] == [pytest.approx(cfg.model.lr)] * 8
        assert lrs[8:] == [pytest.approx(0.1 * cfg.model.lr)] * 2
    else:
        assert len(set(lrs)) > 1  # the schedule moved the learning rate


@pytest.mark.parametrize(
    ("optimizer", "accumulate", "rule", "factor"),
    [("adamw", 1, "sqrt", 2.0), ("sgd", 2, "linear", 8.0)],  # global batch 8 or 16, lr for 2
)
def test_the_learning_rate_follows_the_global_batch_by_the_stated_rule(
    train_cfg, optimizer: str, accumulate: int, rule: str, factor: float, caplog
) -> None:
    caplog.set_level(logging.INFO)
    cfg = train_cfg(
        f"model.optimizer={optimizer}",
        "model.lr_batch_size=2",
        f"trainer.accumulate_grad_batches={accumulate}",
        "model.scheduler=none",
        "trainer.limit_train_batches=2",
        "test=false",
        "checks.enabled=false",
        "shift.enabled=false",
    )
    assert cfg.data.batch_size == 8
    metrics = train(cfg)
    scaled = cfg.model.lr * factor
    assert metrics["lr_scaling"] == {
        "given": cfg.model.lr,
        "lr_batch_size": 2,
        "global_batch": 8 * accumulate,
        "rule": rule,
        "lr": pytest.approx(scaled),
        "resumed": False,
    }
    run = Path(cfg.paths.output_dir)
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(scaled)
    assert last["hyper_parameters"]["lr"] == cfg.model.lr  # as given: a rerun scales it once
    assert f"trains at {scaled:.4g} ({rule} scaling)" in caplog.text  # said before training


def test_a_resumed_run_keeps_its_checkpoints_rate_and_says_so(tmp_path: Path, tiny_root: Path):
    common = ["model.lr_batch_size=2", "model.scheduler=none", "trainer.limit_train_batches=2",
              "test=false", "checks.enabled=false", "shift.enabled=false"]  # fmt: skip
    first = compose_train_cfg(tmp_path / "a", tiny_root, *common)
    train(first)
    last = Path(first.paths.output_dir) / "checkpoints" / "last.ckpt"
    resumed = compose_train_cfg(
        tmp_path / "b", tiny_root, *common, "data.batch_size=4", "trainer.max_epochs=2",
        f"ckpt_path={last}",
    )  # fmt: skip
    record = train(resumed)["lr_scaling"]
    assert record["resumed"] is True
    assert record["lr"] == pytest.approx(first.model.lr * 2**0.5)  # what batch 4 would get
    ckpt = torch.load(
        Path(resumed.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True
    )
    assert ckpt["epoch"] == 1
    # the rate batch 8 got (2 x), carried on from the checkpoint
    assert ckpt["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(first.model.lr * 2)


class SimulatedKillError(Exception):
    pass


class DiesAtEpoch2(model_module.PneumoniaClassifier):
    def on_train_epoch_start(self) -> None:
        if self.current_epoch == 2:
            raise SimulatedKillError


@pytest.mark.slow
def test_resume_continues_a_killed_run(tmp_path: Path, tiny_root: Path) -> None:
    same = ["trainer.max_epochs=3", "trainer.limit_train_batches=3", "test=false"]
    first = compose_train_cfg(tmp_path / "a", tiny_root, *same)
    first.model._target_ = f"{__name__}.DiesAtEpoch2"
    with pytest.raises(SimulatedKillError):
        train(first)
    last = Path(first.paths.output_dir) / "checkpoints" / "last.ckpt"
    before = torch.load(last, map_location="cpu", weights_only=True)
    assert before["epoch"] == 1  # the last finished epoch, although epoch 0 may be the best

    second = compose_train_cfg(tmp_path / "b", tiny_root, *same, f"ckpt_path={last}")
    metrics = train(second)
    after = torch.load(
        Path(second.paths.output_dir) / "checkpoints" / "last.ckpt",
        map_location="cpu",
        weights_only=True,
    )
    assert after["epoch"] == 2  # one more epoch, not three
    assert after["global_step"] == before["global_step"] + 3
    adam_steps = lambda c: c["optimizer_states"][0]["state"][0]["step"].item()  # noqa: E731
    assert adam_steps(after) == adam_steps(before) + 3
    schedule = lambda c: c["lr_schedulers"][0]["last_epoch"]  # noqa: E731  (OneCycle, per step)
    assert schedule(after) == schedule(before) + 3
    assert 0.0 <= metrics["threshold"] <= 1.0
    # the first run's files are untouched, and the new folder says where it came from
    assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] == 1
    linked = (Path(second.paths.output_dir) / "resumed_from.txt").read_text().strip()
    assert linked == str(Path(first.paths.output_dir).resolve())


class CtrlCAtEpoch2(model_module.PneumoniaClassifier):
    def on_train_epoch_start(self) -> None:
        if self.current_epoch == 2:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_ctrl_c_prints_the_command_that_continues_in_the_same_folder(
    tmp_path: Path, tiny_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import signal

    same = ["trainer.max_epochs=3", "trainer.limit_train_batches=3", "test=false"]
    first = compose_train_cfg(tmp_path, tiny_root, *same)
    first.model._target_ = f"{__name__}.CtrlCAtEpoch2"
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit):  # Lightning's graceful shutdown ends in sys.exit(1)
            train(first)
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning leaves Ctrl-C ignored
    run = Path(first.paths.output_dir).resolve()
    (hint,) = [r.getMessage() for r in caplog.records if "Continue it" in r.getMessage()]
    command = hint.splitlines()[1].split()
    assert command[:3] == ["python", "-m", "pneumonia.train"]
    assert f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}" in command
    assert f"hydra.run.dir={run}" in command
    assert "trainer.max_epochs=3" in command
    # What the command does: the same overrides, resumed into the same folder.
    second = compose_train_cfg(
        tmp_path, tiny_root, *same, f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"
    )
    train(second)
    after = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert after["epoch"] == 2
    assert (run / "metrics.json").is_file()
    assert not (run / "resumed_from.txt").exists()  # the same folder: nothing to link


def test_resume_with_a_longer_onecycle_run_fails_before_training(
    tmp_path: Path, tiny_root: Path
) -> None:
    common = ["trainer.limit_train_batches=2", "test=false", "model.scheduler=onecycle"]
    first = compose_train_cfg(tmp_path / "a", tiny_root, "trainer.max_epochs=1", *common)
    train(first)
    last = Path(first.paths.output_dir) / "checkpoints" / "last.ckpt"
    longer = compose_train_cfg(
        tmp_path / "b", tiny_root, "trainer.max_epochs=3", f"ckpt_path={last}", *common
    )
    with pytest.raises(ValueError, match=r"covers 2 steps but this run needs 6.*max_epochs"):
        train(longer)
    assert not (Path(longer.paths.output_dir) / "checkpoints" / "last.ckpt").exists()


def test_resume_from_a_missing_checkpoint_says_so(train_cfg, tmp_path: Path) -> None:
    cfg = train_cfg(f"ckpt_path={tmp_path / 'nope.ckpt'}")
    with pytest.raises(FileNotFoundError, match=r"nope\.ckpt does not exist.*last\.ckpt"):
        train(cfg)


def test_resume_from_a_foreign_checkpoint_says_so(train_cfg, tmp_path: Path) -> None:
    from pneumonia.models.checkpoint import CheckpointError

    foreign = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}, "epoch": 4}, foreign)
    with pytest.raises(CheckpointError, match="not written by pneumonia.train"):
        train(train_cfg(f"ckpt_path={foreign}"))


# ----------------------------------------------------------------------------- stop, resume
class SigtermAtEpoch2(model_module.PneumoniaClassifier):
    """What a scheduler's preemption does to a run: SIGTERM to the process."""

    def on_train_epoch_start(self) -> None:
        if self.current_epoch == 2:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_exits_non_zero_with_the_command_that_resumes(
    tmp_path: Path, tiny_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = compose_train_cfg(
        tmp_path, tiny_root, "trainer.max_epochs=4", "trainer.limit_train_batches=2", "test=false"
    )
    cfg.model._target_ = f"{__name__}.SigtermAtEpoch2"
    handler = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as info:
            train(cfg)
    finally:
        signal.signal(signal.SIGTERM, handler)
    assert info.value.code == 128 + signal.SIGTERM  # train && evaluate does not carry on
    run = Path(cfg.paths.output_dir).resolve()
    assert not (run / "metrics.json").exists()
    (hint,) = [r.getMessage() for r in caplog.records if "Continue it" in r.getMessage()]
    assert "was stopped (SIGTERM)" in hint
    assert f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}" in hint


class DeletesATrainingImage(model_module.PneumoniaClassifier):
    def on_train_epoch_start(self) -> None:
        if self.current_epoch == 1:
            self.trainer.datamodule.files("train")[0].unlink()


def test_a_file_gone_during_training_is_named_and_the_resume_command_printed(
    tmp_path: Path, tiny_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import shutil

    from pneumonia.data.images import BadImageError

    root = tmp_path / "data"
    shutil.copytree(tiny_root, root)
    cfg = compose_train_cfg(tmp_path, root, "data.cache=false", "trainer.max_epochs=3")
    cfg.model._target_ = f"{__name__}.DeletesATrainingImage"
    with pytest.raises(BadImageError, match=r"(?s)cannot stat file.*was it changed or removed"):
        train(cfg)
    message = next(r for r in caplog.records if "Continue it" in r.getMessage()).getMessage()
    assert "Training failed" in message
    assert "last.ckpt" in message


def test_resuming_with_another_backbone_names_both_before_any_work(
    train_cfg, trained: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(model_module, "build_backbone", lambda *a: pytest.fail("built a model"))
    cfg = train_cfg(f"ckpt_path={trained['ckpt']}", "model=resnet50", "model.weights=null")
    with pytest.raises(ValueError, match=r"holds a resnet18 model.*model\.backbone=resnet50"):
        train(cfg)


def test_a_run_never_writes_into_another_runs_folder(
    tmp_path: Path, tiny_root: Path, trained: dict
) -> None:
    from pneumonia.runs.folders import RunFolderError
    from pneumonia.runs.owners import LOCK

    first = trained["run"]  # a finished run's folder
    cfg = compose_train_cfg(tmp_path, tiny_root, "debug=fdr")
    cfg.paths.output_dir = str(first)
    before = (first / "metrics.json").read_text()
    with pytest.raises(RunFolderError, match=r"holds another training run's metrics\.json"):
        train(cfg)
    assert (first / "metrics.json").read_text() == before
    # A folder a live process holds (this test's parent process stands in for another run).
    held = tmp_path / "held"
    held.mkdir()
    (held / LOCK).write_text(f"{os.getppid()}@{socket.gethostname()}")
    cfg.paths.output_dir = str(held)
    with pytest.raises(
        RunFolderError, match=rf"held by another training run \(process {os.getppid()}"
    ):
        train(cfg)
    # A lock left by a run that died: the folder is free again, and freed after the run.
    (held / LOCK).write_text(f"{2**22 + 12345}@{socket.gethostname()}")
    train(cfg)
    assert not (held / LOCK).exists()


def test_lower_case_class_folders_train_with_the_positive_class_the_error_names(
    tmp_path: Path, tiny_root: Path
) -> None:
    import shutil

    root = tmp_path / "data"
    shutil.copytree(tiny_root, root)
    for split in ("train", "val", "test"):
        for name in ("NORMAL", "PNEUMONIA"):
            (root / split / name).rename(root / split / name.lower())
    with pytest.raises(ValueError, match=r"model\.positive_class=pneumonia\."):
        train(compose_train_cfg(tmp_path / "a", root, "debug=fdr"))
    metrics = train(
        compose_train_cfg(tmp_path / "b", root, "debug=fdr", "model.positive_class=pneumonia")
    )
    assert metrics["test/num_samples"] == 8


def test_precision_16_mixed_on_a_cpu_records_what_lightning_ran(train_cfg) -> None:
    metrics = train(train_cfg("debug=fdr", "trainer.precision=16-mixed"))
    assert metrics["precision"]["used"] == "bf16-mixed"  # Lightning has no fp16 AMP on a CPU
    assert "16-mixed" in metrics["precision"]["reason"]


# ----------------------------------------------------------------------------- bad configs
def test_unknown_config_key_is_refused(tmp_path: Path, tiny_root: Path) -> None:
    with pytest.raises(ConfigCompositionException, match="lrr"):
        compose_train_cfg(tmp_path, tiny_root, "model.lrr=1e-4")


def test_unknown_backbone_lists_valid_names(train_cfg) -> None:
    with pytest.raises(InstantiationException, match=r"resnet5.*Valid:.*resnet50"):
        train(train_cfg("model.backbone=resnet5"))


def test_missing_data_root_stops_before_building_a_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_model(*args, **kwargs):
        raise AssertionError("built a model before checking the data")

    monkeypatch.setattr(model_module, "build_backbone", no_model)
    cfg = compose_train_cfg(tmp_path, tmp_path / "chest_xray")
    with pytest.raises(DataLayoutError) as info:
        train(cfg)
    message = str(info.value)
    for needle in (str(tmp_path / "chest_xray"), "train,val,test", "data.root=", "experiment=demo"):
        assert needle in message


# ----------------------------------------------------------------------------- the real CLI
def _cli(tmp_path: Path, tiny_root: Path, *args: str, timeout: int = 300):
    flags = [a for a in args if a.startswith("-")]  # Hydra's argparse wants flags first
    overrides = tiny_overrides(tmp_path, tiny_root, *(a for a in args if not a.startswith("-")))
    # PYTHONPATH: the code of this checkout, whatever the environment has installed.
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "HYDRA_FULL_ERROR": "1",
           "PYTHONPATH": str(REPO_ROOT)}  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "pneumonia.train", *flags, *overrides],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_cli_typo_in_a_key_fails_with_hydras_message(tmp_path: Path, tiny_root: Path) -> None:
    result = _cli(tmp_path, tiny_root, "model.lrr=1e-4", timeout=120)
    assert result.returncode != 0
    assert "Could not override 'model.lrr'" in result.stderr


def test_cli_takes_a_users_config_folder(tmp_path: Path, tiny_root: Path) -> None:
    mine = tmp_path / "my_conf" / "experiment"
    mine.mkdir(parents=True)
    (mine / "mine.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /data: demo\n  - override /model: "
        "resnet18\nmodel:\n  lr: 0.0123\n"
    )
    run = tmp_path / "mine_run"
    overrides = [o for o in tiny_overrides(tmp_path, tiny_root) if not o.startswith("experiment")]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pneumonia.train",
            f"--config-dir={tmp_path / 'my_conf'}",
            *overrides,
            "experiment=mine",
            "debug=fdr",
            f"hydra.run.dir={run}",
        ],  # fmt: skip
        cwd=tmp_path,
        env={**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    config = OmegaConf.load(run / ".hydra" / "config.yaml")
    assert config.model.lr == pytest.approx(0.0123)  # the user's experiment ran
    assert config.model.backbone == "resnet18"
    assert json.loads((run / "metrics.json").read_text())["test/num_samples"] == 8


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_counts_every_validation_image_in_each_job_of_a_sweep(
    tmp_path: Path, tiny_root: Path
) -> None:
    """Lightning's own launcher starts rank 1 with the command line: in a multirun, rank 1
    runs the job it is started for, in the job's folder (not a sweep of its own elsewhere)."""
    result = _cli(
        tmp_path,
        tiny_root,
        "-m",
        "model.lr=1e-3,1e-4",
        "trainer=ddp",
        "trainer.devices=2",
        "trainer.accelerator=cpu",
        "trainer.precision=32-true",
        "checks.degraded=false",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sweeps = list((tmp_path / "outputs" / "train" / "multiruns").iterdir())
    assert len(sweeps) == 1, sweeps  # rank 1 ran no sweep of its own
    cfg = compose_train_cfg(tmp_path / "probe", tiny_root)
    n_test = len(list((tiny_root / "test").rglob("*.jpeg")))
    assert n_test % 2 == 1  # uneven shards: a padding sampler would have counted n_test + 1
    for job in ("0", "1"):
        run = sweeps[0] / job
        assert (run / "train_ddp_process_1.log").exists()  # a second process ran this job
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["val/num_samples"] == val_split_size(cfg)
        # The checks after training run on rank 0 alone, over every validation image.
        assert metrics["checks"]["val"]["num_images"] == val_split_size(cfg)
        assert metrics["test/num_samples"] == n_test


@pytest.mark.slow
def test_optuna_search_optimises_the_configured_metric(tmp_path: Path, tiny_root: Path) -> None:
    sweep = tmp_path / "optuna"
    result = _cli(
        tmp_path,
        tiny_root,
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.n_startup_trials=2",
        "trainer.limit_train_batches=2",
        "test=false",
        "checks.enabled=false",
        "shift.enabled=false",
        f"hydra.sweep.dir={sweep}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    trials = [json.loads((sweep / str(i) / "metrics.json").read_text()) for i in range(2)]
    summary = (sweep / "optimization_results.yaml").read_text()
    best = float(summary.split("best_value:")[1].split()[0])
    # the checkpoint's monitor (val/loss, mode min) is what the search minimises
    assert best == pytest.approx(min(t["val/loss"] for t in trials))


def test_optuna_direction_follows_the_checkpoint_monitor() -> None:
    from pneumonia.config import compose

    default = compose("train", ["hparams_search=optuna"])
    assert (default.optimized_metric, default.hydra.sweeper.direction) == ("val/loss", "minimize")
    auroc = compose(
        "train",
        [
            "hparams_search=optuna",
            "callbacks.model_checkpoint.monitor=val/auroc",
            "callbacks.model_checkpoint.mode=max",
        ],
    )
    assert (auroc.optimized_metric, auroc.hydra.sweeper.direction) == ("val/auroc", "maximize")


# ----------------------------------------------------------------------------- configs
def test_backbone_configs_are_small_deltas_of_one_base() -> None:
    from pneumonia.config import compose

    models = {name: compose("train", [f"model={name}"]).model for name in ("resnet18", "resnet50")}
    differ = {k for k in models["resnet50"] if models["resnet50"][k] != models["resnet18"][k]}
    assert differ == {"backbone", "weights"}
    assert models["resnet18"].threshold_rule == "bayes"


def test_the_old_threshold_key_is_refused_by_name(tmp_path: Path, tiny_root: Path) -> None:
    with pytest.raises(ConfigCompositionException, match="model.threshold"):
        compose_train_cfg(tmp_path, tiny_root, "model.threshold=youden")
    cfg = compose_train_cfg(tmp_path, tiny_root, "model.threshold_rule=youden")
    assert cfg.model.threshold_rule == "youden"


def test_a_positive_class_at_index_0_trains_and_evaluates(tmp_path: Path, tiny_root: Path):
    """Class folders that sort PNEUMONIA first: 'PNEUMONIA' < 'normal' (upper case first)."""
    import shutil

    from pneumonia.decision.report import metrics_report
    from pneumonia.evaluation import score
    from pneumonia.models.checkpoint import load_checkpoint

    root = tmp_path / "data"
    shutil.copytree(tiny_root, root)
    for split in ("train", "val", "test"):
        (root / split / "NORMAL").rename(root / split / "normal")
    cfg = compose_train_cfg(tmp_path, root, "trainer.limit_train_batches=2")
    metrics = train(cfg)
    ckpt = load_checkpoint(metrics["best_model_path"])
    assert ckpt.class_names == ["PNEUMONIA", "normal"]
    assert ckpt.positive_index == 0
    preds = score(ckpt, "test", device=torch.device("cpu"), precision="32-true")
    assert preds.targets.tolist() == [f.parent.name == "PNEUMONIA" for f in preds.files]
    result = metrics_report(preds, resamples=10)
    assert result["confusion_matrix"] == metrics["test/confusion_matrix"]
    assert result["metrics"]["auroc"]["value"] == pytest.approx(metrics["test/auroc"], abs=1e-5)


# ----------------------------------------------------------------------------- optional parts
def test_csv_logger_early_stopping_and_a_square_resize_work_as_configured(
    tmp_path: Path, tiny_root: Path
) -> None:
    """logger=[tensorboard,csv], callbacks=[default,early_stopping], data.resize_mode=square,
    as a user types them."""
    import csv

    from pneumonia.config import compose
    from pneumonia.evaluation import score

    overrides = tiny_overrides(
        tmp_path, tiny_root,
        "logger=[tensorboard,csv]",
        "callbacks=[default,early_stopping]",
        # no improvement ever counts (mode min: it must beat the best by 100): stops after
        # the second epoch of five
        "callbacks.early_stopping.patience=1",
        "callbacks.early_stopping.min_delta=100",
        "trainer.max_epochs=5",
        "data.resize_mode=square",
        "checks.enabled=false",
    )  # fmt: skip
    cfg = compose("train", overrides, output_dir=tmp_path / "run")
    metrics = train(cfg)
    run = tmp_path / "run"
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 1  # stopped early: epochs 0 and 1 of 0-4
    with open(run / "csv" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    val_losses = [r["val/loss"] for r in rows if r.get("val/loss")]
    assert len(val_losses) == 2 + 1  # two epochs, then the best checkpoint's validation
    ckpt = load_checkpoint(metrics["best_model_path"])
    assert ckpt.preprocessing.resize_mode == "square"
    image = next((tiny_root / "test" / "NORMAL").iterdir())
    assert ckpt.preprocessing.decode(image).shape == (40, 40)  # stretched, not cropped
    # Evaluation reads the square resize from the checkpoint: the same AUROC as training's test.
    preds = score(ckpt, "test", device=torch.device("cpu"), precision="32-true")
    from torchmetrics.functional.classification import binary_auroc

    auroc = binary_auroc(preds.probs, preds.targets).item()
    assert auroc == pytest.approx(metrics["test/auroc"], abs=1e-5)


def test_leakage_and_the_cache_folder_of_the_environment_reach_the_run(
    tmp_path: Path, tiny_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    root = tmp_path / "data"
    shutil.copytree(tiny_root, root)
    leaked = sorted((root / "test" / "NORMAL").iterdir())[0]
    shutil.copy(leaked, root / "train" / "NORMAL" / f"copy_{leaked.name}")
    monkeypatch.setenv("PNEUMONIA_CACHE_DIR", str(tmp_path / "env_cache"))
    cfg = compose_train_cfg(tmp_path, root, "data.cache_dir=null", "checks.enabled=false")
    train(cfg)
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    shared = {tuple(r["splits"]): r for r in written["leakage"]}
    assert ("train", "test") in shared or ("val", "test") in shared
    record = shared.get(("train", "test")) or shared[("val", "test")]
    assert record["identical_images"] == 1
    assert any(leaked.name in pair[1] for pair in record["examples_identical"])
    assert list((tmp_path / "env_cache").glob("*/meta.json"))  # the cache went where told
    assert not (tmp_path / "cache").exists()


# ----------------------------------------------------------------------------- value checks
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.lr=abc", r"model\.lr='abc': must be a positive number"),
        ("data.batch_size=0", r"data\.batch_size=0: must be a whole number >= 1"),
        ("trainer.max_epochs=-1", r"onecycle needs a run of known length"),
        ("data.augment.blur_prob=2", r"data\.augment\.blur_prob=2"),
        ("data.crop_size=64", r"data\.crop_size=64 must not exceed data\.resize_size=40"),
        # checked after training until issue 27: a typo cost a whole run
        ("shift.method=odin", r"shift\.method='odin': must be one of mahalanobis, knn, energy"),
        ("shift.flag_rate=5", r"shift\.flag_rate=5: must be a number strictly between 0 and 1"),
        ("checks.resamples=0", r"checks\.resamples=0: must be a whole number >= 1"),
    ],
)
def test_wrong_values_stop_before_any_work(
    tmp_path: Path, tiny_root: Path, monkeypatch: pytest.MonkeyPatch, override: str, message: str
) -> None:
    from pneumonia.config import ConfigValueError

    def no_scan(*args, **kwargs):
        raise AssertionError("the data was touched before the config was checked")

    monkeypatch.setattr("pneumonia.data.index.DataIndex.scan", no_scan)
    cfg = compose_train_cfg(tmp_path, tiny_root, "model.scheduler=onecycle", override)
    with pytest.raises(ConfigValueError, match=message):
        train(cfg)
    assert not (tmp_path / "cache").exists()


def test_every_wrong_value_is_named_at_once(tmp_path: Path, tiny_root: Path) -> None:
    from pneumonia.config import ConfigValueError

    cfg = compose_train_cfg(tmp_path, tiny_root, "model.lr=-1", "data.val_fraction=1.5")
    with pytest.raises(ConfigValueError) as info:
        train(cfg)
    assert "model.lr=-1" in str(info.value)
    assert "data.val_fraction=1.5" in str(info.value)
