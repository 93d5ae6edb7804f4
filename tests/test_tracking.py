"""MLflow and W&B beside TensorBoard: what a run and an aggregate log there, read back through
MLflow's client and W&B's offline run files, never over the network."""

from __future__ import annotations

import json
import os
import struct
import warnings
from pathlib import Path

import pytest

from tests.conftest import compose_train_cfg
from tests.test_aggregate import hand, sweep

# Neither library may phone home from a test: MLflow's usage telemetry starts at import.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

EXTRA = 'the tracking extra: pip install -e ".[tracking]"'
FAST = ("trainer.limit_train_batches=2", "checks.enabled=false", "shift.enabled=false")


def _train(cfg) -> dict:
    from pneumonia.train import train

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return train(cfg)


def test_a_run_logs_params_metrics_checkpoint_and_figures_to_a_local_mlflow_store(
    tmp_path: Path, tiny_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("mlflow", reason=EXTRA)
    from mlflow.tracking import MlflowClient

    from pneumonia.runs.aggregation import flatten_metrics
    from pneumonia.runs.tracking import metric_key

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the default store, not a server
    elsewhere = tmp_path / "launched_here"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # MLflow's own default would write ./mlruns here
    cfg = compose_train_cfg(
        tmp_path, tiny_root, "logger=[tensorboard,mlflow]", "model.lr=0.0123", *FAST
    )
    assert cfg.logger.mlflow.tracking_uri == f"sqlite:///{tmp_path}/outputs/mlflow.db"
    metrics = _train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    assert json.loads((run_dir / "metrics.json").read_text()) == metrics
    assert (run_dir / "tensorboard").is_dir()  # beside TensorBoard, not instead of it

    client = MlflowClient(cfg.logger.mlflow.tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("pneumonia").experiment_id])
    assert run.info.status == "FINISHED"
    logged = run.data.metrics
    # every number of metrics.json, the best checkpoint's (not the last epoch's) values
    expected = {metric_key(k): v for k, v in flatten_metrics(metrics).items()}
    assert {"val/auroc", "val/loss", "test/f10.5", "decision.threshold"} <= set(expected)
    assert {k: logged.get(k) for k in expected} == pytest.approx(expected)
    # Lightning's curves are there too: one train/loss per step
    assert len(client.get_metric_history(run.info.run_id, "train/loss_step")) == 2
    assert run.data.params["model/lr"] == "0.0123"
    assert run.data.params["model/backbone"] == "resnet18"
    assert run.data.tags["best_model_path"] == metrics["best_model_path"]
    assert Path(run.data.tags["best_model_path"]).is_file()
    assert run.data.tags["output_dir"] == str(run_dir.resolve())

    figures = sorted(p.name for p in run_dir.glob("*.png"))
    assert "roc.png" in figures
    listed = client.list_artifacts(run.info.run_id, "figures")
    assert sorted(Path(a.path).name for a in listed) == figures
    assert "metrics.json" in {a.path for a in client.list_artifacts(run.info.run_id)}
    # artifacts beside the store, nothing in the directory the run started from
    assert list((tmp_path / "outputs" / "mlartifacts").rglob("roc.png"))
    assert not list(elsewhere.iterdir())


def test_a_tracking_server_is_one_override_or_mlflow_tracking_uri_away(
    tmp_path: Path, tiny_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The logger is built without contacting the server (MLflow connects at the first log)."""
    pytest.importorskip("mlflow", reason=EXTRA)
    import hydra

    server = "http://127.0.0.1:5055"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for overrides, env in [((f"logger.mlflow.tracking_uri={server}",), None), ((), server)]:
        if env:
            monkeypatch.setenv("MLFLOW_TRACKING_URI", env)
        cfg = compose_train_cfg(tmp_path, tiny_root, "logger=mlflow", *overrides)
        logger = hydra.utils.instantiate(cfg.logger.mlflow)
        assert logger._tracking_uri == server
        assert logger._artifact_location is None  # the server's to choose
    assert not (tmp_path / "outputs").exists()  # no local store made


def test_a_wandb_run_offline_writes_its_metrics_config_and_figures_locally(
    tmp_path: Path, tiny_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("wandb", reason=EXTRA)
    for name, value in {
        "WANDB_MODE": "offline",  # no login, no upload: `wandb sync` does that later
        "WANDB_SILENT": "true",
        "WANDB_DISABLE_GIT": "true",
        "WANDB_DISABLE_CODE": "true",
        "WANDB_ERROR_REPORTING": "false",
        "WANDB_CONSOLE": "off",
        "WANDB_DIR": str(tmp_path / "wandb_dir"),
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb_config"),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb_cache"),
        "WANDB_DATA_DIR": str(tmp_path / "wandb_data"),
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cfg = compose_train_cfg(tmp_path, tiny_root, "logger=wandb", "model.lr=0.0123", *FAST)
    metrics = _train(cfg)

    (offline,) = (Path(cfg.paths.output_dir) / "wandb").glob("offline-run-*")
    (records,) = offline.glob("run-*.wandb")
    history, summary, config = _read_wandb(records)
    assert summary["val/auroc"] == pytest.approx(metrics["val/auroc"])
    assert summary["test/loss"] == pytest.approx(metrics["test/loss"])
    assert summary["best_model_path"] == metrics["best_model_path"]
    assert config["model/lr"] == pytest.approx(0.0123)
    assert any("train/loss_step" in row for row in history)  # Lightning's curves
    figures = sorted(p.stem for p in Path(cfg.paths.output_dir).glob("*.png"))
    assert "roc" in figures
    media = sorted(offline.glob("files/media/images/figures/*.png"))
    assert [p.name.rsplit("_", 2)[0] for p in media] == figures
    assert summary["test/accuracy@0.5"] == pytest.approx(metrics["test/accuracy@0.5"])


def _read_wandb(path: Path) -> tuple[list[dict], dict, dict]:
    """History rows, summary and config of an offline run's record file (``run-<id>.wandb``:
    W&B's protobuf records in LevelDB's log format, 32 KiB blocks of framed chunks)."""
    from wandb.proto import wandb_internal_pb2

    def key(item) -> str:
        return item.key or "/".join(item.nested_key)

    history, summary, config = [], {}, {}
    for data in _leveldb_log(path.read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            summary |= {key(i): json.loads(i.value_json) for i in record.summary.update}
        elif kind == "config":
            config |= {key(i): json.loads(i.value_json) for i in record.config.update}
    return history, summary, config


def _leveldb_log(data: bytes, block: int = 32768):
    assert data[:4] == b":W&B", "not a W&B record file"
    pos, pending = 7, b""  # after the file header: ":W&B", magic 0xBEE1, version
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header: padding
            pos += block - pos % block
            continue
        length, kind = struct.unpack("<HB", data[pos + 4 : pos + 7])  # after a CRC32C
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 1:  # a whole record
            yield chunk
        elif kind in (2, 3):  # its first or a middle part
            pending += chunk
        elif kind == 4:  # its last part
            yield pending + chunk
            pending = b""
        else:
            return


def test_the_aggregate_of_a_sweep_goes_to_mlflow_on_request(tmp_path: Path) -> None:
    pytest.importorskip("mlflow", reason=EXTRA)
    from mlflow.tracking import MlflowClient

    from pneumonia.aggregate import main

    root, aurocs = sweep(tmp_path)
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    assert main([str(root), "--mlflow", uri]) == 0
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("pneumonia-aggregate").experiment_id
    runs = client.search_runs([experiment])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parent.data.tags["sweep_folder"] == str(root)
    assert {"aggregate.md", "aggregate.csv", "aggregate.json"} <= {
        a.path for a in client.list_artifacts(parent.info.run_id)
    }
    children = {r.data.params["model.lr"]: r for r in runs if r is not parent}
    assert set(children) == set(aurocs)
    for lr, values in aurocs.items():
        child = children[lr]
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        mean, std, low, high = hand(values)
        got = child.data.metrics
        assert got["val/auroc/mean"] == pytest.approx(mean)
        assert got["val/auroc/std"] == pytest.approx(std)
        assert (got["val/auroc/ci_low"], got["val/auroc/ci_high"]) == pytest.approx((low, high))
        assert got["val/auroc/n"] == 3
        assert got["checks.holdout.auroc/mean"] == pytest.approx(mean - 0.1)
