"""Tables through the commands: training on a hospital's label file, and external validation
of a checkpoint on a collection in one command (``pneumonia-evaluate data=nih ...``)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd
import pytest

from pneumonia.evaluate import evaluate
from pneumonia.models.checkpoint import load_checkpoint
from pneumonia.train import train
from tests.collection_copies import hospital_copy, nih_copy
from tests.conftest import compose_train_cfg
from tests.test_evaluate import compose_eval

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

HOSPITAL = [
    "data=manifest",
    "data.table.columns.path=file",
    "data.table.columns.label=finding",
    "data.table.columns.patient_id=mrn",
    "data.table.columns.source=site",
    "data.table.labels.NORMAL=[no]",
    "data.table.labels.PNEUMONIA=[yes]",
]


def rows(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_training_on_a_label_file_and_evaluating_its_splits(tmp_path: Path) -> None:
    root = hospital_copy(tmp_path / "hospital", n_patients=16)
    cfg = compose_train_cfg(
        tmp_path, root, *HOSPITAL, "data.val_fraction=0.25", "checks.degraded=false",
        "checks.resamples=100",
    )  # fmt: skip
    metrics = train(cfg)
    ckpt = load_checkpoint(metrics["best_model_path"])
    assert ckpt.data_args["table"]["columns"]["label"] == "finding"  # the run's table, kept
    # every validation image's prediction, with the table's columns, beside metrics.json
    val_rows = rows(tmp_path / "run" / "val_predictions.csv")
    assert len(val_rows) == metrics["checks"]["val"]["num_images"]
    assert all(r["patient_id"] and r["source"] in ("north", "south") for r in val_rows)
    # val is rebuilt from the label file the run read: the same images, in the same split
    result = evaluate(compose_eval(tmp_path, ckpt.path, "split=val", "bootstrap.resamples=50"))
    assert result["num_images"] == metrics["checks"]["val"]["num_images"]
    table = rows(tmp_path / "eval" / "predictions.csv")
    labels = pd.read_csv(root / "labels.csv").assign(path=lambda t: str(root) + "/" + t["file"])
    by_path = labels.set_index("path")
    for row in table:  # the label file's columns travel into predictions.csv, row by row
        assert row["patient_id"] == by_path.loc[row["file"], "mrn"]
        assert row["source"] == by_path.loc[row["file"], "site"]
        assert int(row["age"]) == by_path.loc[row["file"], "age"]
    # both sites among val's images: metrics per source, which add up to the whole
    if len({row["source"] for row in table}) == 2:
        sources = result["by_source"]
        assert sum(s["num_images"] for s in sources.values()) == result["num_images"]


def test_external_validation_of_a_checkpoint_on_a_collection(trained: dict, tmp_path: Path):
    root = nih_copy(tmp_path / "nih")
    result = evaluate(compose_eval(tmp_path, trained["ckpt"], "data=nih", f"data.root={root}"))
    table = rows(tmp_path / "eval" / "predictions.csv")
    # the official test list's usable frontal images (the Effusion-only image is left out)
    assert sorted(Path(r["file"]).name for r in table) == ["00000004_000.png", "00000005_000.png"]
    assert result["num_images"] == 2
    by_name = {Path(r["file"]).name: r for r in table}
    assert by_name["00000004_000.png"]["label"] == "PNEUMONIA"
    assert by_name["00000005_000.png"]["label"] == "NORMAL"
    assert (by_name["00000005_000.png"]["patient_id"], by_name["00000005_000.png"]["sex"]) == (
        "5",
        "F",
    )
    assert {r["source"] for r in table} == {"nih"}
    saved = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert saved["by_source"] is None  # one source: the report itself is its figures


def test_evaluation_reports_each_source_of_a_table(trained: dict, tmp_path: Path) -> None:
    root = hospital_copy(tmp_path / "hospital")
    result = evaluate(compose_eval(tmp_path, trained["ckpt"], *HOSPITAL, f"data.root={root}"))
    labels = pd.read_csv(root / "labels.csv")
    sources = result["by_source"]
    assert set(sources) == {"north", "south"}
    for site, group in sources.items():
        mine = labels[labels["site"] == site]
        assert group["num_images"] == len(mine)
        assert group["num_pneumonia"] == (mine["finding"] == "yes").sum()
        assert 0.0 <= group["metrics"]["auroc"]["value"] <= 1.0
    assert "## By source" in (tmp_path / "eval" / "report.md").read_text()
