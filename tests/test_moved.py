"""Issue 27 moved the modules into role packages: the old names still import, and a run and a
checkpoint written before the move still load, resume and are recognised by their sweep."""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from pneumonia._moved import BECAME_PACKAGES, MOVED, current_path

from .conftest import compose_train_cfg

# What the code before the move recorded as _target_ in every training run's config.
OLD_TARGETS = {
    "pneumonia.models.classifier.PneumoniaClassifier": "pneumonia.model.PneumoniaClassifier",
    "pneumonia.models.budget.TimeBudget": "pneumonia.budget.TimeBudget",
    "pneumonia.models.callbacks.EvaluationFigures": "pneumonia.callbacks.EvaluationFigures",
    "pneumonia.models.callbacks.SampleGrid": "pneumonia.callbacks.SampleGrid",
    "pneumonia.runs.folders.RunFolder": "pneumonia.runs.RunFolder",
    "pneumonia.runs.tracking.mlflow_logger": "pneumonia.tracking.mlflow_logger",
}


def test_every_old_module_name_imports_the_module_that_moved() -> None:
    code = (
        "import importlib, warnings\n"
        "from pneumonia._moved import MOVED\n"
        "for old, new in MOVED.items():\n"
        "    with warnings.catch_warnings(record=True) as said:\n"
        "        warnings.simplefilter('always')\n"
        "        module = importlib.import_module(old)\n"
        "    assert module is importlib.import_module(new), old\n"
        "    assert module.__spec__.name == new, (old, module.__spec__.name)\n"
        "    assert any(new in str(w.message) for w in said), old\n"
        "from pneumonia.decision import Decision\n"
        "from pneumonia.inference import predict_files\n"
        "from pneumonia.runs import best_checkpoint\n"
        "import pneumonia.model as m\n"
        "from hydra.utils import get_class\n"
        "assert get_class('pneumonia.model.PneumoniaClassifier') is m.PneumoniaClassifier\n"
        "print('ok')\n"
    )  # a fresh interpreter: this session imported the new names already
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr


def test_old_dotted_names_read_as_todays() -> None:
    for new, old in OLD_TARGETS.items():
        assert current_path(old) == new
        assert current_path(new) == new
    assert (
        current_path("pneumonia.data.ChestXRayDataModule") == "pneumonia.data.ChestXRayDataModule"
    )
    assert current_path("pytorch_lightning.Trainer") == "pytorch_lightning.Trainer"
    assert current_path("pneumonia.inference.explain") == "pneumonia.inference.explain"
    for new in {**MOVED, **BECAME_PACKAGES}.values():
        assert importlib.util.find_spec(new) is not None, new


def _as_before_the_move(config: object) -> object:
    if isinstance(config, dict):
        return {k: _as_before_the_move(v) for k, v in config.items()}
    if isinstance(config, list):
        return [_as_before_the_move(v) for v in config]
    return OLD_TARGETS.get(config, config) if isinstance(config, str) else config


def test_a_run_written_before_the_move_loads_resumes_and_is_its_sweeps_job(
    trained: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from pneumonia.models.checkpoint import load_checkpoint
    from pneumonia.runs.resume import check_resumable, earlier_attempt

    ckpt = torch.load(trained["ckpt"], map_location="cpu", weights_only=True)
    config = ckpt["pneumonia"]["config"]
    ckpt["pneumonia"]["config"] = old = _as_before_the_move(config)
    assert old != config  # the record holds old targets now
    run = tmp_path / "old_run"
    (run / "checkpoints").mkdir(parents=True)
    best = run / "checkpoints" / trained["ckpt"].name
    torch.save(ckpt, best)
    metrics = json.loads((trained["run"] / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps({**metrics, "best_model_path": str(best)}))

    loaded = load_checkpoint(best)
    assert loaded.class_names == ["NORMAL", "PNEUMONIA"]
    assert loaded.config["model"]["_target_"] == "pneumonia.model.PneumoniaClassifier"

    same = compose_train_cfg(tmp_path / "again", trained["root"], "trainer.max_epochs=2")
    check_resumable(ckpt, best, same)
    assert "differ" not in caplog.text
    attempt = earlier_attempt(run, same)  # the sweep job run again: finished, not run twice
    assert attempt.metrics["best_model_path"] == str(best)
    other = compose_train_cfg(tmp_path / "other", trained["root"], "trainer.max_epochs=3")
    with pytest.raises(Exception, match=r"trainer/max_epochs: 2 -> 3"):
        earlier_attempt(run, other)
    shutil.rmtree(run)


def test_a_recorded_model_config_with_an_old_target_instantiates() -> None:
    from hydra.utils import instantiate

    from pneumonia.models.classifier import PneumoniaClassifier

    cfg = OmegaConf.create({"_target_": "pneumonia.model.PneumoniaClassifier",
                            "backbone": "resnet18", "weights": None})  # fmt: skip
    sys.modules.pop("pneumonia.model", None)  # imported under its old name afresh
    with pytest.warns(DeprecationWarning, match="pneumonia.models.classifier"):
        model = instantiate(cfg)
    assert isinstance(model, PneumoniaClassifier)
