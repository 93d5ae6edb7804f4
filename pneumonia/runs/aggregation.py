"""One answer from many runs: the jobs of a sweep (folds, seeds, settings) grouped by the
settings that vary, each metric as mean, standard deviation and a 95% t-interval over the jobs;
for a k-fold, the folds' validation predictions pooled into one out-of-fold set per seed.

A job is a folder holding ``metrics.json`` and Hydra's ``.hydra/overrides.yaml``. Jobs that
differ only in the fold and the seed are repeats of one setting: they form one group.
"""

from __future__ import annotations

import hashlib
import math
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import yaml
from torchmetrics.functional.classification import binary_auroc

from pneumonia.config import flatten
from pneumonia.decision.calibration import reliability
from pneumonia.decision.predictions import VAL_PREDICTIONS, positive_class, read_predictions
from pneumonia.errors import InputNotFoundError, InputValueError
from pneumonia.runs.layout import FAILED, metrics_file, read_metrics

# Overrides that repeat a setting rather than change it.
REPEATS = ("data.fold", "seed", "data.seed")
CONFIDENCE = 0.95


@dataclass
class Job:
    """One finished run of a sweep."""

    folder: Path
    overrides: dict[str, str]
    metrics: dict[str, float]  # flattened: "val/auroc", "checks.holdout.auroc", ...


@dataclass
class Group:
    """The jobs of one setting, and each metric's summary over them."""

    setting: dict[str, str]  # the varying overrides that define it (fold and seed aside)
    jobs: list[Job] = field(default_factory=list)

    def summary(self, confidence: float = CONFIDENCE) -> dict[str, dict[str, float | int]]:
        """metric -> ``n``, ``mean``, ``std`` (n - 1), ``ci_low``, ``ci_high`` (a Student t
        interval of the mean; a single job has no spread, and its interval is its value)."""
        names = sorted({name for job in self.jobs for name in job.metrics})
        out = {}
        for name in names:
            values = [job.metrics[name] for job in self.jobs if name in job.metrics]
            out[name] = mean_interval(values, confidence)
        return out


def mean_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Mean, sample standard deviation and the t-interval of the mean of ``values``."""
    from scipy.stats import t

    n = len(values)
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if n > 1 else 0.0
    half = t.ppf(0.5 + confidence / 2, n - 1) * std / math.sqrt(n) if n > 1 else 0.0
    return {"n": n, "mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half}


def flatten_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of ``metrics.json``, nested keys joined by dots (paths and text left out;
    booleans are not numbers here)."""
    return {
        name: float(value)
        for name, value in flatten(metrics, sep=".").items()
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    }


def read_jobs(folder: Path) -> tuple[list[Job], list[Path]]:
    """Every finished job under ``folder`` (at any depth), and the job folders without a
    ``metrics.json`` (unfinished or failed: :func:`unfinished_reason`), which are reported,
    not averaged.

    Raises:
        InputNotFoundError: no folder, or no job in it.
        InputValueError: jobs that are not repeats of a setting although they look like it
            (:func:`check_repeats`), or a metrics.json that cannot be read.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise InputNotFoundError(f"{folder} is not a folder: pass a sweep (multirun) folder")
    jobs, unfinished = [], []
    for overrides in sorted(folder.rglob(".hydra/overrides.yaml")):
        job = overrides.parent.parent
        if not metrics_file(job).is_file():
            unfinished.append(job)
            continue
        listed = yaml.safe_load(overrides.read_text()) or []
        jobs.append(Job(job, dict(_split(o) for o in listed), flatten_metrics(read_metrics(job))))
    if not jobs:
        raise InputNotFoundError(
            f"No finished job under {folder}: a job is a folder with metrics.json and "
            ".hydra/overrides.yaml, as `python -m pneumonia.train -m ...` writes them."
            + "".join(f"\n  {j}: {unfinished_reason(j)}" for j in unfinished)
        )
    check_repeats(jobs)
    return jobs, unfinished


def unfinished_reason(job: Path) -> str:
    """Why a job has no metrics.json: its error (``failed.txt``), or that it never finished."""
    failed = job / FAILED
    if failed.is_file():
        error = " ".join(failed.read_text(errors="replace").split())  # one line
        return "failed: " + (error if len(error) <= 400 else error[:399] + "…")
    return "no metrics.json: still running, or stopped (run the sweep's command again to finish it)"


def check_repeats(jobs: Sequence[Job]) -> None:
    """A ``data.fold`` without ``data.folds`` trains one split again and again: no folds, and a
    spread of zero if they were averaged as folds.

    Raises:
        InputValueError: naming the jobs and the fix.
    """
    alone = [
        j.folder for j in jobs if "data.fold" in j.overrides and "data.folds" not in j.overrides
    ]
    if alone:
        raise InputValueError(
            f"{len(alone)} job(s) set data.fold without data.folds (e.g. {alone[0]}): "
            "data.fold picks a fold of data.folds, so these trained one split again and again, "
            "not folds. Run the cross-validation with data.folds=K 'data.fold=range(K)'."
        )


def _split(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def group_jobs(jobs: Iterable[Job], repeats: Sequence[str] = REPEATS) -> list[Group]:
    """Jobs grouped by the overrides whose values differ between jobs, ``repeats`` aside."""
    jobs = list(jobs)
    keys = sorted({k for job in jobs for k in job.overrides if k not in repeats})
    varying = [k for k in keys if len({job.overrides.get(k) for job in jobs}) > 1]
    groups: dict[tuple, Group] = {}
    for job in jobs:
        setting = {k: job.overrides.get(k, "") for k in varying}
        groups.setdefault(tuple(setting.items()), Group(setting)).jobs.append(job)
    return list(groups.values())


def pooled_folds(group: Group) -> dict[str, pd.DataFrame]:
    """Per seed, the k-fold jobs' ``val_predictions.csv`` pooled: every image's out-of-fold
    prediction once. Empty where the group is no k-fold or its jobs wrote no predictions.

    Raises:
        InputValueError: an image in the validation folds of two jobs of one seed (not a
            k-fold of one pool).
    """
    by_seed: dict[str, list[pd.DataFrame]] = {}
    for job in group.jobs:
        rows = job.folder / VAL_PREDICTIONS
        if "data.fold" not in job.overrides or not rows.is_file():
            continue
        seed = job.overrides.get("seed", job.overrides.get("data.seed", ""))
        table = read_predictions(rows)
        for column in ("probability", "threshold"):
            table[column] = pd.to_numeric(table[column])
        by_seed.setdefault(seed, []).append(table)
    pooled = {}
    for seed, parts in by_seed.items():
        table = pd.concat(parts, ignore_index=True)
        twice = table["file"][table["file"].duplicated()].tolist()
        if twice:
            raise InputValueError(
                f"{len(twice)} images are in the validation folds of two jobs of seed "
                f"{seed!r} (e.g. {twice[0]}): these jobs are not the folds of one k-fold."
            )
        pooled[seed] = table
    return pooled


def out_of_fold(pooled: Mapping[str, pd.DataFrame], confidence: float = CONFIDENCE) -> dict:
    """Each seed's pooled AUROC, confusion matrix (at each job's stored threshold) and
    calibration curve with its ECE, and the AUROC's and ECE's mean and interval over the
    seeds."""
    seeds = {}
    for seed, table in pooled.items():
        probs, targets = _scores(table)
        predicted = (table["prediction"] == positive_class(table)).to_numpy()
        truth = targets.numpy().astype(bool)
        seeds[seed] = {
            "num_images": len(table),
            "calibration": reliability(probs, targets),
            "auroc": float(binary_auroc(probs, targets)),
            "confusion_matrix": [
                [int((~truth & ~predicted).sum()), int((~truth & predicted).sum())],
                [int((truth & ~predicted).sum()), int((truth & predicted).sum())],
            ],
        }
    return {
        "seeds": seeds,
        "auroc": mean_interval([s["auroc"] for s in seeds.values()], confidence),
        "ece": mean_interval([s["calibration"]["ece"] for s in seeds.values()], confidence),
    }


def _scores(table: pd.DataFrame) -> tuple[torch.Tensor, torch.Tensor]:
    """A predictions table's (N,) positive-class probabilities and (N,) 0/1 targets."""
    targets = torch.tensor((table["label"] == positive_class(table)).to_numpy(), dtype=torch.long)
    return torch.tensor(table["probability"].to_numpy(), dtype=torch.float64), targets


def aggregate(
    folder: Path, confidence: float = CONFIDENCE, figures: Path | None = None
) -> dict[str, Any]:
    """The sweep under ``folder``: its groups, each with its jobs, metric summaries and (for a
    k-fold) out-of-fold figures; with ``figures``, each k-fold group's pooled ROC and
    calibration curve per seed are drawn there (``oof_roc_<group>_seed<seed>.png``,
    ``oof_calibration_...``)."""
    jobs, unfinished = read_jobs(folder)
    groups = []
    for number, group in enumerate(group_jobs(jobs)):
        pooled = pooled_folds(group)
        drawn = []
        if figures is not None:
            for seed, table in pooled.items():
                name = f"{number}_seed{_file_part(seed)}.png"
                drawn.append(_roc(table, figures / f"oof_roc_{name}"))
                drawn.append(_calibration(table, figures / f"oof_calibration_{name}"))
        groups.append(
            {
                "setting": group.setting,
                "jobs": [str(j.folder) for j in group.jobs],
                "metrics": group.summary(confidence),
                "out_of_fold": out_of_fold(pooled, confidence) if pooled else None,
                # folds whose validation images were not scored one by one (checks.enabled=false)
                "without_predictions": [
                    str(j.folder)
                    for j in group.jobs
                    if "data.fold" in j.overrides and not (j.folder / VAL_PREDICTIONS).is_file()
                ],  # fmt: skip
                "figures": drawn,
            }
        )
    return {
        "folder": str(folder),
        "confidence": confidence,
        "unfinished": {str(j): unfinished_reason(j) for j in unfinished},
        "groups": groups,
    }


def _file_part(seed: str) -> str:
    """A seed as part of a file name: as it is when it is a plain word (``0``, ``42``), else a
    hash of it (an override's value could hold ``/`` or ``..``, or be long)."""
    if re.fullmatch(r"[\w.-]{1,32}", seed) and ".." not in seed:
        return seed
    return (
        "none" if not seed else hashlib.sha1(seed.encode(), usedforsecurity=False).hexdigest()[:10]
    )


def _roc(table: pd.DataFrame, path: Path) -> str:
    from pneumonia.reports.plots import roc_figure, save_figure

    probs, targets = _scores(table)
    save_figure(roc_figure(probs, targets, f"out of fold, {len(table)} images"), path)
    return path.name


def _calibration(table: pd.DataFrame, path: Path) -> str:
    from pneumonia.reports.plots import reliability_figure, save_figure

    curve = reliability(*_scores(table))
    save_figure(reliability_figure(curve, f"out of fold, {len(table)} images"), path)
    return path.name
