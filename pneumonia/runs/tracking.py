"""Experiment tracking that a team shares: MLflow and Weights & Biases beside TensorBoard
(``logger=[tensorboard,mlflow]``, ``logger=wandb``; ``pip install -e ".[tracking]"``).

Lightning's own loggers log the curves while a run trains. :func:`log_run` adds, at its end,
what runs are compared by: the flattened config as parameters, the best checkpoint's metrics
(the numbers of ``metrics.json``, nested ones as ``checks.holdout.auroc``), the checkpoint's
path, and the run's figures and ``metrics.json`` as artifacts. :func:`log_aggregate` logs
``pneumonia-aggregate``'s table to MLflow: one run for the sweep, one nested run per setting.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pneumonia.runs.aggregation import flatten_metrics
from pneumonia.runs.layout import metrics_file

log = logging.getLogger(__name__)

INSTALL = 'pip install -e ".[tracking]"'
AGGREGATE_EXPERIMENT = "pneumonia-aggregate"
# A local SQLite store keeps its artifacts beside the database, not in MLflow's default
# ./mlruns of whatever directory a run starts from.
LOCAL_ARTIFACTS = "mlartifacts"
SQLITE = "sqlite:///"
MLFLOW_BATCH = 1000  # metrics per log_batch call (MLflow's limit)
STATS = (
    "mean",
    "std",
    "ci_low",
    "ci_high",
    "n",
)  # pneumonia.runs.aggregation.mean_interval's


def require_mlflow() -> None:
    if importlib.util.find_spec("mlflow") is None:
        raise ModuleNotFoundError(f"MLflow is not installed: {INSTALL}")


def local_store(tracking_uri: str) -> tuple[str, str | None]:
    """``(tracking_uri, artifact_location)``: a SQLite store's path made absolute (and its
    folder made), with its artifacts beside it; any other URI as it is, its server's choice of
    artifact location left alone."""
    if not tracking_uri.startswith(SQLITE):
        return tracking_uri, None
    db = Path(tracking_uri[len(SQLITE) :]).expanduser().resolve()
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"{SQLITE}{db}", (db.parent / LOCAL_ARTIFACTS).as_uri()


def mlflow_logger(
    tracking_uri: str,
    output_dir: str,
    log_dir: str | None = None,
    run_name: str | None = None,
    artifact_location: str | None = None,
    tags: Mapping[str, Any] | None = None,
    **kwargs: Any,
):
    """Lightning's ``MLFlowLogger`` on ``tracking_uri`` (``conf/logger/mlflow.yaml``), its run
    named after the run folder (relative to ``log_dir``) and tagged with it."""
    require_mlflow()
    # Images of patients are this tool's data: MLflow's client reports usage to its makers
    # unless told not to, and nothing leaves a hospital's machine that the user did not ask
    # for. MLFLOW_DISABLE_TELEMETRY=false in the environment turns it back on.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from pytorch_lightning.loggers import MLFlowLogger

    uri, local_artifacts = local_store(tracking_uri)
    folder = Path(output_dir).resolve()
    if run_name is None:
        base = Path(log_dir).resolve() if log_dir else folder.parent
        run_name = str(folder.relative_to(base)) if folder.is_relative_to(base) else folder.name
    return MLFlowLogger(
        tracking_uri=uri,
        run_name=run_name,
        artifact_location=artifact_location or local_artifacts,
        tags={"output_dir": str(folder), **(tags or {})},
        **kwargs,
    )


def metric_key(name: str) -> str:
    """A metric name as MLflow accepts it, by Lightning's MLFlowLogger's rule (other characters
    dropped: ``test/f1@0.5`` is ``test/f10.5``), so that a run's last value and its curve share
    one name."""
    return re.sub(r"[^a-zA-Z0-9_/. -]+", "", name)


def log_run(
    loggers: Iterable[Any],
    params: Mapping[str, Any],
    metrics: Mapping[str, Any],
    output_dir: Path,
    step: int,
) -> None:
    """Log a finished run to each MLflow and W&B logger of ``loggers`` (others are left alone):
    ``params`` (the flattened config), ``metrics.json``'s numbers at ``step``, the best
    checkpoint's path, and the run folder's figures (``*.png``) and ``metrics.json``."""
    from pytorch_lightning.loggers import MLFlowLogger, WandbLogger

    numbers = flatten_metrics(metrics)
    best = metrics.get("best_model_path") or ""
    figures = sorted(output_dir.glob("*.png"))
    for logger in loggers:
        if isinstance(logger, MLFlowLogger):
            _log_mlflow(logger, params, numbers, best, output_dir, figures, step)
        elif isinstance(logger, WandbLogger):
            _log_wandb(logger, params, numbers, best, figures, step)


def _log_mlflow(logger, params, numbers, best, output_dir, figures, step) -> None:
    logger.log_hyperparams(dict(params))
    logger.log_metrics({metric_key(k): v for k, v in numbers.items()}, step=step)
    client, run_id = logger.experiment, logger.run_id
    client.set_tag(run_id, "best_model_path", best)
    json_file = metrics_file(output_dir)
    if json_file.is_file():
        client.log_artifact(run_id, str(json_file))
    for figure in figures:
        client.log_artifact(run_id, str(figure), "figures")
    client.set_terminated(run_id, "FINISHED")  # its end time: after the artifacts
    log.info("MLflow: run %s in %s", run_id, logger._tracking_uri)


def _log_wandb(logger, params, numbers, best, figures, step) -> None:
    logger.log_hyperparams(dict(params))
    logger.log_metrics(numbers, step=step)
    for figure in figures:
        logger.log_image(key=f"figures/{figure.stem}", images=[str(figure)], step=step)
    run = logger.experiment
    run.summary.update({**numbers, "best_model_path": best})
    where = getattr(run, "dir", "")
    # Finished here, not at exit: the next job of a sweep in this process gets a run of its own.
    run.finish()
    log.info("W&B: run %s (%s)", run.id, where)


def log_aggregate(
    result: Mapping[str, Any], tracking_uri: str, files: Iterable[Path], run_name: str
) -> str:
    """The aggregate of a sweep to MLflow's ``pneumonia-aggregate`` experiment: a run holding
    ``files`` (the tables and figures), and a nested run per setting with the setting as params
    and each metric's ``<metric>/mean``, ``/std``, ``/ci_low``, ``/ci_high`` and ``/n``.
    Returns the sweep's run id."""
    require_mlflow()
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

    uri, artifacts = local_store(tracking_uri)
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(AGGREGATE_EXPERIMENT)
    experiment = (
        found.experiment_id
        if found is not None and found.lifecycle_stage != "deleted"
        else client.create_experiment(AGGREGATE_EXPERIMENT, artifact_location=artifacts)
    )
    tags = {MLFLOW_RUN_NAME: run_name, "sweep_folder": str(result["folder"])}
    parent = client.create_run(experiment, tags=tags).info.run_id
    for path in files:
        client.log_artifact(parent, str(path))
    now = int(time.time() * 1000)
    for group in result["groups"]:
        setting = group["setting"]
        name = ",".join(f"{k}={v}" for k, v in setting.items()) or "all jobs"
        child = client.create_run(
            experiment, tags={MLFLOW_PARENT_RUN_ID: parent, MLFLOW_RUN_NAME: name}
        ).info.run_id
        client.log_batch(child, params=_params(setting))
        summaries = dict(group["metrics"])
        if group.get("out_of_fold"):
            summaries["out_of_fold/auroc"] = group["out_of_fold"]["auroc"]
        values = {"jobs": float(len(group["jobs"]))}
        for metric, m in summaries.items():
            values |= {f"{metric}/{stat}": float(m[stat]) for stat in STATS}
        rows = [Metric(metric_key(k), v, now, 0) for k, v in values.items()]
        for start in range(0, len(rows), MLFLOW_BATCH):
            client.log_batch(child, metrics=rows[start : start + MLFLOW_BATCH])
        client.set_terminated(child, "FINISHED")
    client.set_terminated(parent, "FINISHED")
    return parent


def _params(setting: Mapping[str, Any]):
    from mlflow.entities import Param

    return [Param(k, str(v)) for k, v in setting.items()]
