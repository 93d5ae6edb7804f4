"""One answer from many runs: the jobs of a sweep (folds, seeds, settings) grouped by the
settings that vary, each metric as mean, standard deviation and a 95% t-interval over the jobs.

A job is a folder holding ``metrics.json`` and Hydra's ``.hydra/overrides.yaml``. Jobs that
differ only in the fold and the seed are repeats of one setting: they form one group.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pneumonia.errors import InputNotFoundError

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


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of ``metrics.json``, nested keys joined by dots (paths and text left out;
    booleans are not numbers here)."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat |= flatten_metrics(value, f"{name}.")
        elif (
            isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ):
            flat[name] = float(value)
    return flat


def read_jobs(folder: Path) -> tuple[list[Job], list[Path]]:
    """Every finished job under ``folder`` (at any depth), and the job folders without a
    ``metrics.json`` (unfinished or failed), which are reported, not averaged.

    Raises:
        InputNotFoundError: no folder, or no job in it.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise InputNotFoundError(f"{folder} is not a folder: pass a sweep (multirun) folder")
    jobs, unfinished = [], []
    for overrides in sorted(folder.rglob(".hydra/overrides.yaml")):
        job = overrides.parent.parent
        metrics = job / "metrics.json"
        if not metrics.is_file():
            unfinished.append(job)
            continue
        listed = yaml.safe_load(overrides.read_text()) or []
        jobs.append(
            Job(
                job,
                dict(_split(o) for o in listed),
                flatten_metrics(json.loads(metrics.read_text())),
            )
        )
    if not jobs:
        raise InputNotFoundError(
            f"No finished job under {folder}: a job is a folder with metrics.json and "
            ".hydra/overrides.yaml, as `python -m pneumonia.train -m ...` writes them."
        )
    return jobs, unfinished


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


def aggregate(folder: Path, confidence: float = CONFIDENCE) -> dict[str, Any]:
    """The sweep under ``folder``: its groups, each with its jobs and metric summaries."""
    jobs, unfinished = read_jobs(folder)
    return {
        "folder": str(folder),
        "confidence": confidence,
        "unfinished": [str(j) for j in unfinished],
        "groups": [
            {
                "setting": group.setting,
                "jobs": [str(j.folder) for j in group.jobs],
                "metrics": group.summary(confidence),
            }
            for group in group_jobs(jobs)
        ],
    }
