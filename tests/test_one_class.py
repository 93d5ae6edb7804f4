"""A set of one class is evaluated for what it defines (issue 28): only NORMAL images give the
specificity and the false-positive rate, only PNEUMONIA images the sensitivity; what needs both
classes is None in report.json, said in report.md and the log, and never a NaN or a crash."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from pneumonia.data import DataLayoutError
from pneumonia.data.index import DataIndex, labelled_folder
from pneumonia.decision.metrics import metrics_with_intervals
from pneumonia.decision.predictions import Predictions
from pneumonia.decision.report import calibration_report, metrics_report, operating_points
from pneumonia.decision.rules import Decision
from pneumonia.errors import InputValueError
from pneumonia.evaluation.comparison import pair
from pneumonia.evaluation.report_md import evaluation_markdown

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

CLASSES = ["NORMAL", "PNEUMONIA"]
BOOT = {"resamples": 100, "confidence": 0.95, "seed": 0}
# Eight NORMAL images, three of them called PNEUMONIA at 0.5 (0.7, 0.9, 0.6): specificity 5/8.
NORMAL_PROBS = [0.1, 0.7, 0.2, 0.9, 0.3, 0.4, 0.6, 0.05]
# Calibrated at an even prevalence, temperature 1: the probabilities as they are.
DECISION = Decision(threshold_rule=0.5, threshold=0.5, cost_ratio=1.0, prevalence=0.5,
                    temperature=1.0, reference_prevalence=0.5, target_sensitivity=0.9)  # fmt: skip


def _preds(probs: list[float], label: int) -> Predictions:
    return Predictions(torch.tensor(probs), torch.full((len(probs),), label), 0.5)


def test_only_normal_images_give_specificity_and_the_false_positive_rate() -> None:
    preds = _preds(NORMAL_PROBS, 0)
    report = metrics_report(preds, **BOOT)
    m = report["metrics"]
    assert m["specificity"]["value"] == pytest.approx(5 / 8)
    # the interval is today's: the one metrics_with_intervals draws for specificity
    today = metrics_with_intervals(preds.probs, preds.targets, 0.5, ranking=True, **BOOT)
    assert m["specificity"] == today["specificity"]
    fpr = m["false_positive_rate"]
    assert fpr["value"] == pytest.approx(3 / 8)
    assert (fpr["ci_low"], fpr["ci_high"]) == pytest.approx(
        (1 - m["specificity"]["ci_high"], 1 - m["specificity"]["ci_low"])
    )
    assert fpr["ci_low"] < fpr["value"] < fpr["ci_high"]
    # precision would be 0/3 = 0 and F1 0: numbers a formula gives, not answers
    for name in ("precision", "f1", "auroc", "average_precision", "recall"):
        assert m[name] is None, name
    assert report["confusion_matrix"] == [[5, 3], [0, 0]]
    assert report["one_class"]["positive"] is False
    assert {"auroc", "npv", "operating_points"} <= set(report["one_class"]["not_computed"])
    json.dumps(report, allow_nan=False)  # no NaN anywhere


def test_only_pneumonia_images_give_sensitivity_not_a_precision_of_one() -> None:
    report = metrics_report(_preds([0.8, 0.3, 0.55, 0.9, 0.1], 1), **BOOT)
    m = report["metrics"]
    assert m["recall"]["value"] == pytest.approx(3 / 5)
    assert m["false_negative_rate"]["value"] == pytest.approx(2 / 5)
    for name in ("precision", "f1", "auroc", "average_precision", "specificity"):
        assert m[name] is None, name  # precision and AP would be a trivial 1.0
    assert report["metrics_at_0.5"]["precision"] is None


def test_two_classes_get_no_one_class_section() -> None:
    preds = Predictions(torch.tensor([0.2, 0.8, 0.4]), torch.tensor([0, 1, 1]), 0.5)
    report = metrics_report(preds, **BOOT)
    assert "one_class" not in report
    assert "false_positive_rate" not in report["metrics"]


def test_one_class_calibration_and_operating_points_are_none_not_nan() -> None:
    preds = _preds(NORMAL_PROBS, 0)
    cal = calibration_report(preds, DECISION)
    before = cal["before_temperature"]
    p = torch.tensor(NORMAL_PROBS, dtype=torch.float64)
    assert before["mean_probability"] == pytest.approx(float(p.mean()), abs=1e-6)
    assert before["observed_rate"] == 0.0
    assert before["brier"] == pytest.approx(float((p**2).mean()), abs=1e-6)  # all targets 0
    assert before["slope"] is None
    assert before["in_the_large"] is None
    points = operating_points(preds, prevalence=0.1, **BOOT)
    assert points["at_prevalence"]["ppv"] is None
    assert points["at_prevalence"]["npv"] is None
    assert points["sensitivity_at_specificity_90"] is None
    json.dumps([cal, points], allow_nan=False)


def test_one_class_report_md_says_what_is_not_computed() -> None:
    preds = _preds(NORMAL_PROBS, 0)
    result = metrics_report(preds, **BOOT)
    result |= {
        "one_class": {"class": "NORMAL", **result["one_class"]},
        "calibration": calibration_report(preds, DECISION),
        "operating_points": operating_points(preds, 0.1, **BOOT),
        "decision": DECISION.to_dict(),
        "checkpoint": "m.ckpt", "split": "test", "data_root": "X", "tta": False, "shift": None,
    }  # fmt: skip
    page = evaluation_markdown(result, ["confusion_matrix.png", "reliability.png"])
    assert "**Every image is NORMAL** (8 images)" in page
    assert "need both classes: they are not computed" in page
    for said in ("AUROC", "precision (PPV), NPV", "operating points"):
        assert said in page.split("| metric |")[0], said  # in the statement, above the table
    assert "| Specificity | 0.625 |" in page
    assert "| False-positive rate (1 - specificity) | 0.375 |" in page
    assert "| Precision (PPV) | - | - |" in page  # a dash, as for any metric not defined
    assert "| AUROC | - | - |" in page
    assert "## Operating points" not in page
    assert "Calibration slope" not in page
    assert "| Mean probability of PNEUMONIA |" in page
    assert "nan" not in page.lower()
    assert "roc.png" not in page


def test_a_confusion_matrix_of_one_class_draws_no_nan() -> None:
    from pneumonia.reports.plots import confusion_matrix_figure

    fig = confusion_matrix_figure([[4, 1], [0, 0]], CLASSES)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert "4" in texts
    assert not any("nan" in t for t in texts)


# ----------------------------------------------------------------------------- folders
def _one_class_folder(tiny_root: Path, folder: Path, cls: str, *, empty_other: bool) -> Path:
    shutil.copytree(tiny_root / "test" / cls, folder / "test" / cls)
    if empty_other:
        (folder / "test" / (set(CLASSES) - {cls}).pop()).mkdir()
    return folder


@pytest.mark.parametrize("empty_other", [True, False])
def test_a_labelled_folder_of_one_class_lists_it(tiny_root: Path, tmp_path: Path, empty_other):
    root = _one_class_folder(tiny_root, tmp_path / "X", "NORMAL", empty_other=empty_other)
    listing = labelled_folder(root / "test", CLASSES)
    assert len(listing.files) == 4
    assert set(listing.labels) == {0}
    (root / "test" / "OTHER").mkdir()
    with pytest.raises(DataLayoutError, match=r"'OTHER'.*\], but the model was trained on"):
        labelled_folder(root / "test", CLASSES)


def test_a_labelled_folder_without_images_says_so_once(tmp_path: Path) -> None:
    for name in CLASSES:
        (tmp_path / name).mkdir()
    with pytest.raises(DataLayoutError, match="NORMAL/, PNEUMONIA/ of .* hold no images") as info:
        labelled_folder(tmp_path, CLASSES)
    assert "remove" not in str(info.value)


def test_training_still_refuses_an_empty_class_folder_without_a_circle(tiny_copy: Path):
    for f in (tiny_copy / "train" / "PNEUMONIA").iterdir():
        f.unlink()
    with pytest.raises(DataLayoutError, match=r"train/PNEUMONIA holds no images") as info:
        DataIndex.scan(tiny_copy)
    assert "add images to it." in str(info.value)  # not "remove the folder": one class left
    for f in (tiny_copy / "test" / "NORMAL").iterdir():
        f.unlink()
    shutil.rmtree(tiny_copy / "train" / "PNEUMONIA")
    shutil.copytree(tiny_copy / "val" / "PNEUMONIA", tiny_copy / "train" / "PNEUMONIA")
    with pytest.raises(DataLayoutError, match=r"remove the whole test/ split \(it is optional\)"):
        DataIndex.scan(tiny_copy)


def test_evaluate_command_on_only_normal_images(trained: dict, tmp_path: Path) -> None:
    """End to end: an empty PNEUMONIA/ beside NORMAL/; specificity = TN / N of predictions.csv."""
    root = _one_class_folder(trained["root"], tmp_path / "X", "NORMAL", empty_other=True)
    out = tmp_path / "eval"
    run = subprocess.run(
        [sys.executable, "-m", "pneumonia.evaluate", f"ckpt_path={trained['ckpt']}",
         f"data.root={root}", f"paths.root_dir={tmp_path}", f"data.cache_dir={tmp_path / 'c'}",
         "bootstrap.resamples=50", "precision=32-true", "prevalence=0.1", "mistakes=0",
         f"output_dir={out}"],
        cwd=tmp_path, env={**os.environ, "PYTHONWARNINGS": "ignore"}, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    text = (out / "report.json").read_text()
    assert "NaN" not in text
    report = json.loads(text)
    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == report["num_images"] == 4
    assert {r["label"] for r in rows} == {"NORMAL"}
    tn = sum(r["prediction"] == "NORMAL" for r in rows)
    assert report["metrics"]["specificity"]["value"] == pytest.approx(tn / len(rows))
    assert report["metrics"]["false_positive_rate"]["value"] == pytest.approx(1 - tn / len(rows))
    assert report["confusion_matrix"] == [[tn, len(rows) - tn], [0, 0]]
    assert report["metrics"]["auroc"] is None
    assert report["one_class"]["class"] == "NORMAL"
    page = (out / "report.md").read_text()
    assert "**Every image is NORMAL** (4 images)" in page
    assert "not computed" in page
    assert not (out / "roc.png").exists()
    assert not (out / "pr.png").exists()
    assert (out / "confusion_matrix.png").stat().st_size > 1000
    assert "Every image is NORMAL" in (out / "report.html").read_text()
    assert "Every image of split test is NORMAL (4 images)" in run.stderr + run.stdout


def test_the_api_evaluates_a_label_file_of_one_class(trained: dict, tmp_path: Path) -> None:
    """A label file's test rows all PNEUMONIA, through the Python API: sensitivity = TP / N."""
    import pneumonia

    files = sorted((trained["root"] / "test" / "PNEUMONIA").glob("*.jpeg"))
    rows = [{"path": str(f), "label": "PNEUMONIA", "split": "test"} for f in files]
    rows += [{"path": str(f), "label": "NORMAL", "split": "train"}
             for f in sorted((trained["root"] / "train" / "NORMAL").glob("*.jpeg"))]  # fmt: skip
    pd.DataFrame(rows).to_csv(tmp_path / "labels.csv", index=False)
    clf = pneumonia.load(trained["ckpt"], device="cpu", precision="32-true")
    report, table = clf.evaluate(tmp_path, table={"reader": "manifest", "file": "labels.csv"},
                                 resamples=50)  # fmt: skip
    assert len(table) == len(files) == report["num_pneumonia"]
    tp = int((table["prediction"] == "PNEUMONIA").sum())
    assert report["metrics"]["recall"]["value"] == pytest.approx(tp / len(files))
    assert report["metrics"]["precision"] is None
    assert report["metrics"]["specificity"] is None
    assert report["one_class"] == {**report["one_class"], "class": "PNEUMONIA", "positive": True}
    json.dumps(report, allow_nan=False)


# ----------------------------------------------------------------------------- compare
def test_compare_refuses_one_class_naming_what_to_read_instead() -> None:
    table = pd.DataFrame({
        "file": ["a.jpeg", "b.jpeg", "c.jpeg"], "label": ["NORMAL"] * 3,
        "probability": ["0.2", "0.7", "0.1"], "prediction": ["NORMAL", "PNEUMONIA", "NORMAL"],
        "threshold": ["0.5"] * 3,
    })  # fmt: skip
    with pytest.raises(InputValueError, match="All 3 images are NORMAL") as info:
        pair(table, table.copy())
    assert "specificity" in str(info.value)
    assert "pneumonia-evaluate report" in str(info.value)
