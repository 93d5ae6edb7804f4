"""pneumonia-aggregate: a sweep's jobs grouped by setting (fold and seed aside), each metric's
mean, standard deviation and t-interval checked against a hand computation."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pneumonia.errors import InputNotFoundError, InputValueError
from pneumonia.runs.aggregation import aggregate

# Two-sided 95% Student t quantile with 2 degrees of freedom (any table)
T_975_DF2 = 4.302652729911275


def job(folder: Path, overrides: list[str], metrics: dict | None) -> None:
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if metrics is not None:
        (folder / "metrics.json").write_text(json.dumps(metrics))


def sweep(tmp_path: Path) -> tuple[Path, dict]:
    """2 learning rates x 3 folds, seeds differing too; one job that did not finish."""
    root = tmp_path / "sweep"
    aurocs = {"1e-3": [0.90, 0.94, 0.95], "1e-4": [0.80, 0.86, 0.83]}
    k = 0
    for lr, values in aurocs.items():
        for fold, auroc in enumerate(values):
            metrics = {"val/auroc": auroc, "checks": {"holdout": {"auroc": auroc - 0.1,
                       "num_images": 180}}, "best_model_path": "x.ckpt", "tuned": True}  # fmt: skip
            job(root / str(k), [f"model.lr={lr}", f"data.fold={fold}", f"seed={fold}",
                                "data.folds=3"], metrics)  # fmt: skip
            k += 1
    job(root / str(k), ["model.lr=1e-5", "data.fold=0", "seed=0", "data.folds=3"], None)
    return root, aurocs


def hand(values: list[float]) -> tuple[float, float, float, float]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = T_975_DF2 * std / math.sqrt(n)
    return mean, std, mean - half, mean + half


def test_jobs_group_by_setting_and_each_metric_matches_a_hand_computation(tmp_path: Path):
    root, aurocs = sweep(tmp_path)
    result = aggregate(root)
    assert list(result["unfinished"]) == [str(root / "6")]
    assert "no metrics.json: still running, or stopped" in result["unfinished"][str(root / "6")]
    assert [g["setting"] for g in result["groups"]] == [{"model.lr": "1e-3"}, {"model.lr": "1e-4"}]
    for group in result["groups"]:
        values = aurocs[group["setting"]["model.lr"]]
        summary = group["metrics"]["val/auroc"]
        mean, std, low, high = hand(values)
        assert summary["n"] == 3
        assert summary["mean"] == pytest.approx(mean)
        assert summary["std"] == pytest.approx(std)
        assert (summary["ci_low"], summary["ci_high"]) == pytest.approx((low, high))
        nested = group["metrics"]["checks.holdout.auroc"]  # nested numbers, flattened
        assert nested["mean"] == pytest.approx(mean - 0.1)
        assert "tuned" not in group["metrics"]  # a boolean is not a metric
        assert "best_model_path" not in group["metrics"]


def test_the_command_writes_the_tables_and_refuses_an_empty_folder(tmp_path: Path) -> None:
    root, aurocs = sweep(tmp_path)
    done = subprocess.run([sys.executable, "-m", "pneumonia.aggregate", str(root)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    page = (root / "aggregate.md").read_text()
    assert "## `model.lr=1e-3`" in page
    assert "left out" in page  # the unfinished job is named
    with open(root / "aggregate.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["metric"] == "val/auroc"]
    assert {r["model.lr"]: float(r["mean"]) for r in rows} == pytest.approx(
        {lr: hand(v)[0] for lr, v in aurocs.items()}
    )
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(root / "tensorboard"))
    events.Reload()
    logged = events.Scalars("model.lr=1e-3/val/auroc/mean")
    assert logged[0].value == pytest.approx(hand(aurocs["1e-3"])[0])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputNotFoundError, match="No finished job"):
        aggregate(tmp_path / "empty")
    empty = subprocess.run([sys.executable, "-m", "pneumonia.aggregate", str(tmp_path / "empty")],
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert empty.returncode == 1
    assert "No finished job" in empty.stderr


def brute_auroc(probs: list[float], positive: list[bool]) -> float:
    """Share of (PNEUMONIA, NORMAL) pairs ranked right, ties counting half."""
    pos = [p for p, y in zip(probs, positive, strict=True) if y]
    neg = [p for p, y in zip(probs, positive, strict=True) if not y]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


def fold_rows(folder: Path, files: list[str], probs: list[float], labels: list[str]) -> None:
    import pandas as pd

    pd.DataFrame({
        "file": files, "label": labels, "probability": probs,
        "prediction": ["PNEUMONIA" if p > 0.5 else "NORMAL" for p in probs],
        "threshold": 0.5, "shift_score": "", "in_distribution": "", "error": "",
    }).to_csv(folder / "val_predictions.csv", index=False)  # fmt: skip


def test_k_fold_validation_predictions_pool_into_one_out_of_fold_set(tmp_path: Path) -> None:
    import random

    rng = random.Random(0)
    images = [f"img{i:02d}.png" for i in range(30)]
    labels = ["PNEUMONIA" if i % 3 else "NORMAL" for i in range(30)]
    root = tmp_path / "cv"
    pooled_by_seed = {}
    k = 0
    for seed in (0, 1):
        probs = [min(1.0, max(0.0, (0.7 if y == "PNEUMONIA" else 0.3) + rng.gauss(0, 0.25)))
                 for y in labels]  # fmt: skip
        pooled_by_seed[seed] = probs
        order = list(range(30))
        rng.shuffle(order)
        for fold in range(3):
            part = order[fold::3]
            job(root / str(k), [f"data.fold={fold}", f"seed={seed}", "data.folds=3"],
                {"val/auroc": 0.5})  # fmt: skip
            fold_rows(root / str(k), [images[i] for i in part], [probs[i] for i in part],
                      [labels[i] for i in part])  # fmt: skip
            k += 1
    (group,) = aggregate(root, figures=tmp_path)["groups"]
    oof = group["out_of_fold"]
    positive = [y == "PNEUMONIA" for y in labels]
    for seed, probs in pooled_by_seed.items():
        got = oof["seeds"][str(seed)]
        assert got["num_images"] == 30  # every image once
        assert got["auroc"] == pytest.approx(brute_auroc(probs, positive), abs=1e-6)
        (tn, fp), (fn, tp) = got["confusion_matrix"]
        assert tp == sum(p > 0.5 and y for p, y in zip(probs, positive, strict=True))
        assert tn + fp + fn + tp == 30
        curve = got["calibration"]  # ten equal-width bins, by hand
        for k, b in enumerate(curve["bins"]):
            inside = [(p, y) for p, y in zip(probs, positive, strict=True)
                      if k / 10 <= p < (k + 1) / 10 or (k == 9 and p == 1.0)]  # fmt: skip
            assert b["count"] == len(inside)
            if inside:
                assert b["mean_probability"] == pytest.approx(
                    sum(p for p, _ in inside) / len(inside)
                )
                assert b["observed"] == pytest.approx(sum(y for _, y in inside) / len(inside))
        gaps = sum(b["count"] * abs(b["mean_probability"] - b["observed"])
                   for b in curve["bins"] if b["count"])  # fmt: skip
        assert curve["ece"] == pytest.approx(gaps / 30, abs=1e-5)
    aurocs = [oof["seeds"][s]["auroc"] for s in ("0", "1")]
    assert oof["auroc"]["mean"] == pytest.approx(sum(aurocs) / 2)
    assert all((tmp_path / name).stat().st_size > 1000 for name in group["figures"])
    assert {name.split("_")[1] for name in group["figures"]} == {"roc", "calibration"}

    fold_rows(root / "1", images[:3], [0.9, 0.1, 0.8], labels[:3])  # an image in two folds
    with pytest.raises(InputValueError, match="not the folds of one k-fold"):
        aggregate(root)

    # ... and the command says so in its own words (it was a traceback)
    done = subprocess.run([sys.executable, "-m", "pneumonia.aggregate", str(root)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 1
    assert "not the folds of one k-fold" in done.stderr
    assert "Traceback" not in done.stderr


def test_folds_without_their_predictions_are_named_instead_of_dropping_the_section(
    tmp_path: Path,
) -> None:
    root = tmp_path / "cv"
    for fold in range(3):  # trained with checks.enabled=false: no val_predictions.csv
        job(root / str(fold), [f"data.fold={fold}", "data.folds=3"], {"val/auroc": 0.8})
    (group,) = aggregate(root)["groups"]
    assert group["out_of_fold"] is None
    assert group["without_predictions"] == [str(root / str(f)) for f in range(3)]
    from pneumonia.aggregate import aggregate_markdown

    page = aggregate_markdown(aggregate(root))
    assert "3 fold job(s) without val_predictions.csv" in page
    assert "checks.enabled=false" in page


def test_a_fold_without_folds_and_a_cut_metrics_file_are_refused_by_name(tmp_path: Path) -> None:
    root = tmp_path / "same"
    for fold in range(3):  # data.fold=0,1,2 without data.folds: one split, three times
        job(root / str(fold), [f"data.fold={fold}"], {"val/auroc": 0.8})
    with pytest.raises(InputValueError, match="3 job.s. set data.fold without data.folds"):
        aggregate(root)
    cut = tmp_path / "cut"
    job(cut / "0", ["model.lr=1e-3"], {"val/auroc": 0.8})
    (cut / "0" / "metrics.json").write_text('{"val/auroc": 0.8')  # a disk filled up
    done = subprocess.run([sys.executable, "-m", "pneumonia.aggregate", str(cut)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 1
    assert f"{cut / '0' / 'metrics.json'} is not a run's metrics.json" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_failed_job_of_a_real_sweep_is_kept_and_named_with_its_error(
    tmp_path: Path, tiny_root: Path
) -> None:
    from tests.conftest import run_command, tiny_overrides

    sweep_dir = tmp_path / "sweep"
    code, _ = run_command("train", ["-m", *tiny_overrides(tmp_path, tiny_root, "model.lr=-1,-2",
                                    f"hydra.sweep.dir={sweep_dir}")])  # fmt: skip
    assert code == 1
    for job_dir in ("0", "1"):
        assert "model.lr" in (sweep_dir / job_dir / "failed.txt").read_text()
    with pytest.raises(InputNotFoundError, match="No finished job") as info:
        aggregate(sweep_dir)
    assert f"{sweep_dir / '1'}: failed: ConfigValueError" in str(info.value)
    assert "model.lr=-2: must be a positive number" in str(info.value)


def test_a_seed_that_is_no_plain_word_names_no_file_outside_the_folder(tmp_path: Path) -> None:
    from pneumonia.runs.aggregation import _file_part

    assert [_file_part(s) for s in ("0", "42", "")] == ["0", "42", "none"]
    for hostile in ("../../x", "a/b", "x" * 300, ".."):
        part = _file_part(hostile)
        assert "/" not in part
        assert ".." not in part
        assert len(part) <= 32
