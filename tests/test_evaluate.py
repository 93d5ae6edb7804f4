"""Evaluate, predict, export, safe checkpoint loading and the analysis notebook."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pneumonia.checkpoint import CheckpointError, load_checkpoint
from pneumonia.evaluate import Predictions, confident_mistakes, evaluate, predict_split, report
from pneumonia.export import export_model
from pneumonia.inference import Preprocessing
from pneumonia.predict import list_inputs, predict_files
from pneumonia.train import train

from .conftest import REPO_ROOT, compose_train_cfg

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_root: Path) -> dict:
    """One tiny demo run shared by this module: its metrics, run dir and best checkpoint."""
    tmp = tmp_path_factory.mktemp("trained")
    cfg = compose_train_cfg(tmp, tiny_root, "trainer.max_epochs=2")
    metrics = train(cfg)
    return {
        "metrics": metrics,
        "run": Path(cfg.paths.output_dir),
        "ckpt": Path(metrics["best_model_path"]),
        "root": tiny_root,
        "tmp": tmp,
    }


def compose_eval(tmp_path: Path, ckpt: Path, *overrides: str):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            config_name="evaluate",
            overrides=[
                f"ckpt_path={ckpt}",
                f"paths.root_dir={tmp_path}",
                f"data.cache_dir={tmp_path / 'cache'}",
                "bootstrap.resamples=200",
                *overrides,
            ],
        )
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "eval")
    GlobalHydra.instance().clear()
    return cfg


# ----------------------------------------------------------------------------- evaluate
def test_evaluate_writes_a_report_that_agrees_with_training(trained: dict, tmp_path: Path):
    result = evaluate(compose_eval(tmp_path, trained["ckpt"]))
    out = tmp_path / "eval"
    saved = json.loads((out / "report.json").read_text())
    assert saved["metrics"]["f1"] == pytest.approx(result["metrics"]["f1"])
    # the same checkpoint through Trainer.test (training) and through evaluate's own loop
    for name in ("accuracy", "precision", "recall", "specificity", "f1", "auroc"):
        assert saved["metrics"][name]["value"] == pytest.approx(
            trained["metrics"][f"test/{name}"], abs=1e-5
        ), name
        if name != "auroc":
            assert saved["metrics_at_0.5"][name]["value"] == pytest.approx(
                trained["metrics"][f"test/{name}@0.5"], abs=1e-5
            ), name
    assert saved["confusion_matrix"] == trained["metrics"]["test/confusion_matrix"]
    assert saved["threshold"] == pytest.approx(trained["metrics"]["threshold"])
    for m in saved["metrics"].values():
        assert m["ci_low"] <= m["value"] + 1e-9
        assert m["value"] <= m["ci_high"] + 1e-9
    assert "95% CI" in (out / "report.md").read_text()
    for name in ("confusion_matrix.png", "roc.png", "pr.png"):
        assert (out / name).stat().st_size > 1000, name

    with open(out / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == saved["num_images"] == len(list((trained["root"] / "test").rglob("*.jpeg")))
    for row in rows:
        expected = "PNEUMONIA" if float(row["probability"]) > saved["threshold"] else "NORMAL"
        assert row["prediction"] == expected
        assert row["label"] == Path(row["file"]).parent.name


def test_bootstrap_interval_matches_binomial_noise_on_624_images() -> None:
    g = torch.Generator().manual_seed(0)
    targets = (torch.rand(624, generator=g) < 0.625).long()
    correct = torch.rand(624, generator=g) < 0.85
    probs = torch.where(correct, targets.float() * 0.8 + 0.1, 0.9 - targets.float() * 0.8)
    preds = Predictions(files=[Path(f"{i}.png") for i in range(624)], targets=targets, probs=probs)
    result = report(preds, 0.5, resamples=1000, seed=1)
    acc = result["metrics"]["accuracy"]
    half_width = (acc["ci_high"] - acc["ci_low"]) / 2
    p = acc["value"]
    binomial = 1.96 * (p * (1 - p) / 624) ** 0.5  # about 0.028: the "+-3 points" of the issue
    assert half_width == pytest.approx(binomial, rel=0.2)
    first = report(preds, 0.5, resamples=100, seed=2)
    assert report(preds, 0.5, resamples=100, seed=2) == first  # seeded: the same report twice


def test_tta_is_deterministic_and_averages_the_mirror(trained: dict) -> None:
    ckpt = load_checkpoint(trained["ckpt"])
    plain = predict_split(ckpt, "test", accelerator="cpu")
    tta = predict_split(ckpt, "test", tta=True, accelerator="cpu")
    assert torch.equal(tta.probs, predict_split(ckpt, "test", tta=True, accelerator="cpu").probs)
    pre = Preprocessing.from_data_hparams(ckpt.data_hparams)
    images, _ = pre.collate()([(pre.load(f), 0) for f in plain.files])
    with torch.no_grad():
        mirrored = ckpt.model.predict_proba(torch.flip(images, dims=[3]))
    torch.testing.assert_close(tta.probs, (plain.probs + mirrored) / 2, atol=1e-5, rtol=0)


def test_evaluate_on_data_without_a_test_split_says_so(trained: dict, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "no_test"
    shutil.copytree(trained["root"], root, ignore=shutil.ignore_patterns("test"))
    with pytest.raises(FileNotFoundError, match="There is no test split"):
        evaluate(compose_eval(tmp_path, trained["ckpt"], f"data.root={root}"))


def test_evaluate_cli_runs_and_reports_a_missing_checkpoint(trained: dict, tmp_path: Path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    common = [
        f"paths.root_dir={tmp_path}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "bootstrap.resamples=50",
        f"hydra.run.dir={tmp_path / 'cli'}",
    ]
    ok = subprocess.run(
        [
            sys.executable,
            "-m",
            "pneumonia.evaluate",
            f"ckpt_path={trained['ckpt']}",
            "split=val",
            *common,
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert json.loads((tmp_path / "cli" / "report.json").read_text())["split"] == "val"
    missing = subprocess.run(
        [
            sys.executable,
            "-m",
            "pneumonia.evaluate",
            f"ckpt_path={tmp_path / 'gone.ckpt'}",
            *common,
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert missing.returncode != 0
    assert "gone.ckpt does not exist" in missing.stderr


# ----------------------------------------------------------------------------- checkpoints
def test_checkpoint_errors_are_clear(trained: dict, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.ckpt")
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(trained["ckpt"].read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(truncated)
    foreign = tmp_path / "other_project.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "epoch": 3}, foreign)
    with pytest.raises(CheckpointError, match="not written by pneumonia.train"):
        load_checkpoint(foreign)
    pickled = tmp_path / "pickled_model.ckpt"
    torch.save({"model": Path("an arbitrary object")}, pickled)  # needs unpickling a class
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(pickled)


def test_loaded_checkpoint_carries_threshold_classes_and_preprocessing(trained: dict) -> None:
    ckpt = load_checkpoint(trained["ckpt"])
    assert ckpt.threshold == pytest.approx(trained["metrics"]["threshold"])
    assert ckpt.class_names == ["NORMAL", "PNEUMONIA"]
    assert Preprocessing.from_data_hparams(ckpt.data_hparams).crop_size == 32
    assert not ckpt.model.training


# ----------------------------------------------------------------------------- predict
def test_predict_lists_unreadable_files_and_agrees_with_evaluate(trained: dict, tmp_path: Path):
    ckpt = load_checkpoint(trained["ckpt"])
    reference = predict_split(ckpt, "test", accelerator="cpu")
    folder = tmp_path / "incoming"
    (folder / "sub").mkdir(parents=True)
    picks = reference.files[:3]
    for i, f in enumerate(picks):
        (folder / ("sub" if i == 0 else ".") / f.name).write_bytes(f.read_bytes())
    (folder / "corrupt.jpeg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (folder / "notes.txt").write_text("not an image")
    files = list_inputs(folder)
    assert [f.name for f in files] == sorted(
        f.name for f in [*picks[1:], folder / "corrupt.jpeg"]
    ) + [picks[0].name]
    rows = predict_files(
        ckpt, files, batch_size=2, accelerator="cpu", gradcam_dir=tmp_path / "cam", root=folder
    )
    by_name = {Path(r["file"]).name: r for r in rows}
    assert (
        "cannot" in by_name["corrupt.jpeg"]["error"]
        or "not a readable" in by_name["corrupt.jpeg"]["error"]
    )
    assert by_name["corrupt.jpeg"]["probability"] == ""
    for f in picks:
        i = reference.files.index(f)
        assert float(by_name[f.name]["probability"]) == pytest.approx(
            float(reference.probs[i]), abs=1e-5
        )
        assert by_name[f.name]["error"] == ""
    cams = sorted(p.name for p in (tmp_path / "cam").glob("*.png"))
    assert len(cams) == 3
    assert f"sub__{Path(picks[0].name).stem}_gradcam.png" in cams
    with Image.open(tmp_path / "cam" / cams[0]) as im:
        assert im.size == (32, 32)
        assert im.mode == "RGB"


def test_predict_on_a_missing_input(trained: dict, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_inputs(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no image files"):
        list_inputs(tmp_path / "empty")


def test_gradcam_highlights_something_and_targets_the_last_stage(trained: dict) -> None:
    from pneumonia.explain import cam_target_layer, gradcam

    ckpt = load_checkpoint(trained["ckpt"])
    assert cam_target_layer(ckpt.model) is ckpt.model.backbone.layer4[-1]
    pre = Preprocessing.from_data_hparams(ckpt.data_hparams)
    files = sorted((trained["root"] / "test" / "PNEUMONIA").glob("*.jpeg"))[:2]
    images, _ = pre.collate()([(pre.load(f), 0) for f in files])
    maps = gradcam(ckpt.model, images)
    assert maps.shape == (2, 32, 32)
    assert maps.min() >= 0
    assert maps.max() <= 1


# ----------------------------------------------------------------------------- export
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_matches_pytorch(trained: dict, tmp_path: Path, fmt: str) -> None:
    ckpt = load_checkpoint(trained["ckpt"])
    path, sidecar = export_model(ckpt, fmt, tmp_path)
    meta = json.loads(sidecar.read_text())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, "model.json"])
    assert meta["threshold"] == pytest.approx(ckpt.threshold)
    assert meta["preprocessing"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert meta["preprocessing"]["center_crop"] == 32
    assert meta["positive_class"] == "PNEUMONIA"
    x = torch.randn(5, 3, 32, 32)  # another batch size than the export example
    with torch.no_grad():
        expected = torch.softmax(ckpt.model(x), dim=1).numpy()
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(["probabilities"], {"image": x.numpy()})[0]
    else:
        got = torch.jit.load(str(path))(x).detach().numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------- notebook
def test_confident_mistakes_are_wrong_and_sorted() -> None:
    probs = torch.tensor([0.9, 0.2, 0.6, 0.05, 0.99])
    targets = torch.tensor([0, 1, 0, 0, 1])
    preds = Predictions(files=[Path(str(i)) for i in range(5)], targets=targets, probs=probs)
    assert confident_mistakes(preds, 0.5) == [0, 1, 2]


def test_notebook_is_stripped_in_git() -> None:
    import nbformat

    nb = nbformat.read(REPO_ROOT / "notebooks" / "analysis.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code
    assert all(not c.outputs and c.execution_count is None for c in code)


@pytest.mark.slow
def test_analysis_notebook_executes_on_a_tiny_run(trained: dict, monkeypatch) -> None:
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("PNEUMONIA_RUN_DIR", str(trained["run"]))
    nb = nbformat.read(REPO_ROOT / "notebooks" / "analysis.ipynb", as_version=4)
    NotebookClient(
        nb,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(trained["tmp"])}},
    ).execute()
    images = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if "image/png" in o.get("data", {})
    ]
    assert len(images) >= 5  # curves, confusion matrix, ROC, PR, Grad-CAM (+ mistakes)
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert f"threshold {trained['metrics']['threshold']:.3f}" in text
