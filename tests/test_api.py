"""The Python API: the same numbers as the commands, as plain values, from paths, images or
tensors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import pneumonia
from pneumonia.checkpoint import load_checkpoint
from pneumonia.evaluate import predict_split
from pneumonia.inference import PREDICTION_COLUMNS

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_compose_is_the_config_the_cli_runs() -> None:
    cfg = pneumonia.compose(["experiment=demo", "model.lr=0.003"])
    assert cfg.model.lr == pytest.approx(0.003)
    assert cfg.model.backbone == "resnet18"
    assert pneumonia.compose([], "predict").batch_size >= 1


def test_importing_the_package_loads_no_model_code() -> None:
    code = "import sys, pneumonia; print('torch' in sys.modules, 'pneumonia.api' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


@pytest.fixture(scope="module")
def clf(trained: dict) -> pneumonia.Classifier:
    return pneumonia.load(trained["ckpt"], device="cpu", precision="32-true")


def test_paths_images_and_tensors_give_the_commands_probabilities(
    clf, trained: dict, tmp_path: Path
) -> None:
    reference = predict_split(
        load_checkpoint(trained["ckpt"]), "test", accelerator="cpu", precision="32-true"
    )
    files = reference.files[:4]
    expected = reference.probs[:4]
    table = clf.predict(files)
    assert isinstance(table, pd.DataFrame)
    assert tuple(table.columns) == PREDICTION_COLUMNS  # the layout of predictions.csv
    np.testing.assert_allclose(table["probability"], expected, atol=1e-5)
    images = [Image.open(f) for f in files]
    torch.testing.assert_close(clf.probabilities(images), expected, atol=1e-5, rtol=0)
    batch = clf.batch(files)
    torch.testing.assert_close(clf.probabilities(batch), expected, atol=1e-5, rtol=0)
    from_images = clf.predict([Image.open(f) for f in files])
    np.testing.assert_allclose(from_images["probability"], expected, atol=1e-5)
    np.testing.assert_allclose(clf.predict(batch)["probability"], expected, atol=1e-5)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        clf.probabilities(torch.zeros(2, 32, 32))
    bad = tmp_path / "broken.jpeg"
    bad.write_bytes(b"not a jpeg")
    rows = clf.predict([files[0], bad])
    assert rows["error"][0] == ""
    assert rows["error"][1]
    assert np.isnan(rows["probability"][1])


def test_gradcam_of_one_image(clf, trained: dict) -> None:
    file = next((trained["root"] / "test" / "PNEUMONIA").iterdir())
    heat, picture = clf.gradcam(file)
    crop = clf.ckpt.preprocessing.crop_size
    assert heat.shape == (crop, crop)
    assert 0.0 <= heat.min() <= heat.max() <= 1.0
    assert picture.shape == (crop, crop, 3)
    assert picture.dtype == np.uint8


def test_evaluate_a_folder_returns_the_report_and_the_table(clf, trained: dict) -> None:
    result, table = clf.evaluate(trained["root"], resamples=50)
    n = len(list((trained["root"] / "test").rglob("*.jpeg")))
    assert result["num_images"] == n == len(table)
    assert result["decision"]["threshold_rule"] == "bayes"
    assert (table["label"] == [Path(f).parent.name for f in table["file"]]).all()
    accuracy = (table["label"] == table["prediction"]).mean()
    assert result["metrics"]["accuracy"]["value"] == pytest.approx(accuracy)
