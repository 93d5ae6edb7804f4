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
from pneumonia.decision.predictions import PREDICTION_COLUMNS
from pneumonia.evaluation import score
from pneumonia.models.checkpoint import load_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_compose_is_the_config_the_cli_runs() -> None:
    cfg = pneumonia.compose("train", ["experiment=demo", "model.lr=0.003"])
    assert cfg.model.lr == pytest.approx(0.003)
    assert cfg.model.backbone == "resnet18"
    assert pneumonia.compose("predict").batch_size >= 1
    with pytest.raises(TypeError, match="compose\\('train', \\[...\\]\\)"):
        pneumonia.compose(["experiment=demo"])  # the overrides come second, as in Hydra


def test_compose_takes_a_folder_of_ones_own_configs(tmp_path: Path) -> None:
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "mine.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /model: resnet18\nmodel:\n  lr: 3.0e-4\n"
    )
    cfg = pneumonia.compose("train", ["experiment=mine"], config_dir=tmp_path)
    assert (cfg.model.backbone, cfg.model.lr) == ("resnet18", pytest.approx(3e-4))


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
    reference = score(
        load_checkpoint(trained["ckpt"]), "test", device=torch.device("cpu"), precision="32-true"
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


def test_gradcam_is_the_models_map_drawn_on_the_original_image(
    trained: dict, tmp_path: Path
) -> None:
    from pneumonia.data import Preprocessing
    from pneumonia.models.checkpoint import LoadedCheckpoint
    from pneumonia.models.classifier import PneumoniaClassifier

    from .test_explain import reference_cam

    # A 128 px input: ResNet's last stage then has a 4 x 4 map (at the tiny run's 32 px, 1 x 1:
    # every Grad-CAM would be flat).
    torch.manual_seed(0)
    pre = Preprocessing(resize_size=144, crop_size=128)
    model = PneumoniaClassifier(backbone="resnet18", weights=None).eval()
    ckpt = LoadedCheckpoint(model, Path("random.ckpt"), pre, data_args={}, config=None)
    clf = pneumonia.Classifier(ckpt, device="cpu", precision="32-true")
    # the tiny images as they are (48-72 px: the resize to 144 enlarges them 2-3x), so that the
    # map is drawn on originals smaller than the model's crop too
    files = sorted((trained["root"] / "test" / "PNEUMONIA").iterdir())
    with Image.open(files[0]) as im:
        assert min(im.size) < pre.crop_size
    # An image whose map is not flat, so that an all-zero map could not pass.
    file, expected = next(
        (f, m) for f in files if (m := reference_cam(model, clf.batch([f]), 1)[0]).std() > 0.05
    )
    heat, picture = clf.gradcam(file)
    assert heat.shape == (pre.crop_size, pre.crop_size)
    np.testing.assert_allclose(heat, expected, atol=2e-3)
    with Image.open(file) as im:
        width, height = im.size
        gray = np.asarray(im.convert("L"), dtype=np.float32)
    assert picture.shape == (height, width, 3)  # on the original, not on the model's crop
    assert picture.dtype == np.uint8
    left, top, right, bottom = (round(v) for v in pre.crop_box(width, height))
    inside = picture[top:bottom, left:right].astype(int)
    assert np.abs(inside[..., 0] - inside[..., 2]).mean() > 5  # coloured by the map
    outside = np.ones((height, width), bool)
    outside[top:bottom, left:right] = False
    if outside.any():  # what the crop cut off: the image dimmed, gray
        np.testing.assert_allclose(picture[outside][:, 0], gray[outside] * 0.5, atol=1)


def test_evaluate_a_folder_returns_the_report_and_the_table(clf, trained: dict) -> None:
    result, table = clf.evaluate(trained["root"], resamples=50)
    n = len(list((trained["root"] / "test").rglob("*.jpeg")))
    assert result["num_images"] == n == len(table)
    assert result["decision"]["threshold_rule"] == "bayes"
    assert (table["label"] == [Path(f).parent.name for f in table["file"]]).all()
    accuracy = (table["label"] == table["prediction"]).mean()
    assert result["metrics"]["accuracy"]["value"] == pytest.approx(accuracy)


def test_prior_shift_em_in_predict_and_evaluate(clf, forty_test_images: Path) -> None:
    from pneumonia.decision.calibration import shift_prevalence

    files = sorted(forty_test_images.rglob("*.jpeg"))
    plain = clf.predict(files)["probability"].to_numpy()
    shifted = clf.predict(files, prior_shift="em")["probability"].to_numpy()
    result, table = clf.evaluate(forty_test_images, prior_shift="em", resamples=20)
    estimate = result["prior_shift"]["estimated_prevalence"]
    expected = shift_prevalence(torch.tensor(plain, dtype=torch.float64), 0.5, estimate)
    np.testing.assert_allclose(shifted, expected.numpy(), atol=1e-6)
    by_file = dict(zip(table["file"], table["probability"], strict=True))
    np.testing.assert_allclose([by_file[str(f)] for f in files], shifted, atol=1e-6)
    # tensors take the same path
    from_tensors = clf.predict(clf.batch(files), prior_shift="em")["probability"].to_numpy()
    np.testing.assert_allclose(from_tensors, shifted, atol=1e-5)


def test_a_named_threshold_is_chosen_at_load(trained: dict) -> None:
    table = load_checkpoint(trained["ckpt"]).thresholds
    spec = pneumonia.load(trained["ckpt"], device="cpu", precision="32-true", threshold="spec95")
    assert spec.threshold == pytest.approx(table["spec95"]["threshold"])
    assert spec.ckpt.decision.threshold_rule == "spec95"
    stored = pneumonia.load(trained["ckpt"], device="cpu", precision="32-true")
    assert stored.threshold == pytest.approx(trained["metrics"]["threshold"])
    with pytest.raises(ValueError, match="spec95"):
        pneumonia.load(trained["ckpt"], device="cpu", threshold="spec99")
