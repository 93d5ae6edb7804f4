"""Re-fitting a decision on a new site's labelled images (pneumonia.recalibrate)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from pneumonia.config import compose
from pneumonia.decision.metrics import rates_at
from pneumonia.decision.recalibration import (
    check_sample,
    cross_validated,
    probabilities,
    promised_rates,
    refit,
)
from pneumonia.decision.rules import Decision
from pneumonia.errors import InputValueError
from pneumonia.models.checkpoint import load_checkpoint
from pneumonia.recalibrate import recalibrate

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

VALIDATION = Decision(
    threshold_rule="bayes", threshold=0.5, cost_ratio=1.0, prevalence=0.5, temperature=1.0,
    reference_prevalence=0.5, target_sensitivity=0.95,
)  # fmt: skip


def site(n_normal: int, n_pneumonia: int, seed: int, normal_mean: float = 0.0):
    """Scores of a site whose NORMAL images score ``normal_mean`` higher than at validation
    (NORMAL ~ N(-3, 1), PNEUMONIA ~ N(3, 1.5) there): the failure of the official test split."""
    g = torch.Generator().manual_seed(seed)
    normal = torch.randn(n_normal, generator=g) - 3 + normal_mean
    pneumonia = torch.randn(n_pneumonia, generator=g) * 1.5 + 3
    scores = torch.cat([normal, pneumonia])
    targets = torch.cat([torch.zeros(n_normal), torch.ones(n_pneumonia)]).long()
    return scores, targets


def test_platt_restores_the_specificity_that_a_shifted_site_lost():
    sample, sample_t = site(40, 60, seed=0, normal_mean=2.2)
    rest, rest_t = site(4000, 6000, seed=1, normal_mean=2.2)
    before = rates_at(probabilities(rest, VALIDATION), rest_t, VALIDATION.threshold)
    fitted = refit(sample, sample_t, VALIDATION, "platt")
    after = rates_at(probabilities(rest, fitted), rest_t, fitted.threshold)
    assert before["specificity"] < 0.85  # validation's decision calls healthy images sick
    assert after["specificity"] > before["specificity"] + 0.05
    assert after["specificity"] >= 0.90
    assert after["sensitivity"] >= 0.90
    # the re-fitted probabilities mean what they say on the site (at its own prevalence)
    own = refit(sample, sample_t, VALIDATION, "platt", prevalence=0.6)
    assert float(probabilities(rest, own).mean()) == pytest.approx(0.6, abs=0.03)


def test_a_temperature_alone_moves_no_decision_at_one_half():
    sample, sample_t = site(40, 60, seed=0, normal_mean=2.2)
    fitted = refit(sample, sample_t, VALIDATION, "temperature")
    assert fitted.temperature != pytest.approx(VALIDATION.temperature)
    rest, _ = site(500, 500, seed=1, normal_mean=2.2)
    called_before = probabilities(rest, VALIDATION) > VALIDATION.threshold
    called_after = probabilities(rest, fitted) > fitted.threshold
    assert torch.equal(called_before, called_after)


def test_an_operating_rule_reaches_its_rate_on_the_images_that_fitted_it():
    sample, sample_t = site(100, 100, seed=2, normal_mean=2.0)
    fitted = refit(sample, sample_t, VALIDATION, "spec95")
    assert isinstance(fitted.threshold_rule, float)  # a number: any checkpoint can hold it
    rates = rates_at(probabilities(sample, fitted), sample_t, fitted.threshold)
    assert rates["specificity"] >= 0.95


def test_the_promised_rates_are_out_of_sample_and_hold_on_the_rest_of_the_site():
    sample, sample_t = site(60, 90, seed=3, normal_mean=2.2)
    called = cross_validated(sample, sample_t, VALIDATION, "platt", folds=10)
    promised = promised_rates(called, sample_t)
    rest, rest_t = site(5000, 5000, seed=4, normal_mean=2.2)
    fitted = refit(sample, sample_t, VALIDATION, "platt")
    truth = rates_at(probabilities(rest, fitted), rest_t, fitted.threshold)
    for rate in ("sensitivity", "specificity"):
        low, high = promised[rate]["interval"]
        assert low <= truth[rate] <= high
    assert promised["specificity"]["images"] == 60


def test_too_few_images_for_the_rule_are_refused_with_the_count_it_needs():
    _, targets = site(12, 60, seed=0)
    with pytest.raises(InputValueError, match=r"spec95.*12 NORMAL.*fewer than 20"):
        check_sample("spec95", targets, ("NORMAL", "PNEUMONIA"))
    check_sample("spec90", targets, ("NORMAL", "PNEUMONIA"))  # 12 >= 10: allowed
    _, targets = site(6, 60, seed=0)
    with pytest.raises(InputValueError, match=r"at least 10 .*6 NORMAL"):
        check_sample("platt", targets, ("NORMAL", "PNEUMONIA"))
    with pytest.raises(InputValueError, match="rule='plat'"):
        check_sample("plat", targets, ("NORMAL", "PNEUMONIA"))


def test_scores_that_rank_the_site_backwards_are_refused():
    scores, targets = site(30, 30, seed=0)
    with pytest.raises(InputValueError, match="backwards"):
        refit(-scores, targets, VALIDATION, "platt")


# ---------------------------------------------------------------------------- the command
def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _site_folder(tmp_path: Path, forty: Path) -> Path:
    """36 labelled images the tiny model never saw, as a site's folder."""
    folder = tmp_path / "site"
    shutil.copytree(forty, folder)
    return folder


def compose_recalibrate(tmp_path: Path, ckpt: Path, root: Path, *overrides: str):
    return compose(
        "recalibrate",
        [f"ckpt_path={ckpt}", f"data.root={root}", f"paths.root_dir={tmp_path}",
         f"data.cache_dir={tmp_path / 'cache'}", "precision=32-true", *overrides],
        output_dir=tmp_path / "recal",
    )  # fmt: skip


def test_recalibrate_writes_a_new_checkpoint_that_every_command_reads(
    trained: dict, forty_test_images: Path, tmp_path: Path, caplog
):
    from pneumonia import api
    from pneumonia.evaluate import evaluate
    from pneumonia.export import export

    original = trained["ckpt"]
    before = _sha(original)
    root = _site_folder(tmp_path, forty_test_images)
    with caplog.at_level("INFO"):
        dest = recalibrate(compose_recalibrate(tmp_path, original, root, "rule=spec90"))
    assert _sha(original) == before  # the original is only read
    assert dest.parent == tmp_path / "recal" / "checkpoints"
    assert dest.is_file()
    assert str(dest) in caplog.text
    old, new = load_checkpoint(original), load_checkpoint(dest)
    record = new.decision.recalibration
    assert record["rule"] == "spec90"
    assert sum(record["images"].values()) == 36
    assert record["source"] == str(root.resolve())
    for rate in ("sensitivity", "specificity"):
        low, high = record["promised"][rate]["interval"]
        assert 0 <= low <= record["promised"][rate]["value"] <= high <= 1
    # the stored decision and the named thresholds are the site's, re-fitted
    assert new.threshold == pytest.approx(record["threshold"])
    assert new.thresholds["spec90"]["images"] == record["images"]["NORMAL"]
    assert old.decision.recalibration is None
    torch.testing.assert_close(
        {k: v for k, v in new.model.state_dict().items() if "backbone" in k},
        {k: v for k, v in old.model.state_dict().items() if "backbone" in k},
    )
    # evaluate, export and the API show the record
    report_dir = tmp_path / "evaluate"
    cfg = compose("evaluate", [f"ckpt_path={dest}", f"data.root={root}", "precision=32-true",
                               "bootstrap.resamples=50", f"paths.root_dir={tmp_path}",
                               f"data.cache_dir={tmp_path / 'cache'}"],
                  output_dir=report_dir)  # fmt: skip
    result = evaluate(cfg)
    assert result["decision"]["recalibration"]["rule"] == "spec90"
    assert "Re-fitted by pneumonia.recalibrate" in (report_dir / "report.md").read_text()
    assert result["metrics"]["specificity"]["value"] >= 0.9  # on the images that fitted it
    cfg = compose("export", [f"ckpt_path={dest}", "format=torchscript"],
                  output_dir=tmp_path / "export")  # fmt: skip
    export(cfg)
    model_json = json.loads((tmp_path / "export" / "model.json").read_text())
    assert model_json["decision_rule"]["recalibration"]["images"] == record["images"]
    assert api.load(dest, precision="32-true").decision.recalibration == record
    from pneumonia.predict import predict

    caplog.clear()
    with caplog.at_level("INFO"):
        predict(compose("predict", [f"ckpt_path={dest}", f"input={root}", "precision=32-true"],
                        output_dir=tmp_path / "predict"))  # fmt: skip
    assert "Re-fitted by pneumonia.recalibrate (rule `spec90`)" in caplog.text
    # the probabilities are for the sample's own share of PNEUMONIA unless told otherwise
    assert record["prevalence"] == pytest.approx(20 / 36)


def test_images_of_the_training_data_are_refused(trained: dict, tmp_path: Path):
    train = trained["root"] / "train"
    with pytest.raises(InputValueError, match="images of the training data"):
        recalibrate(compose_recalibrate(tmp_path, trained["ckpt"], train))
    assert not (tmp_path / "recal" / "checkpoints").exists()


def test_an_image_labelled_both_ways_is_refused(
    trained: dict, forty_test_images: Path, tmp_path: Path
):
    root = _site_folder(tmp_path, forty_test_images)
    one = sorted((root / "NORMAL").iterdir())[0]
    shutil.copy(one, root / "PNEUMONIA" / "relabelled.jpeg")
    with pytest.raises(InputValueError, match=r"(?s)labelled both ways.*relabelled.jpeg"):
        recalibrate(compose_recalibrate(tmp_path, trained["ckpt"], root))


def test_a_folder_too_small_for_the_rule_is_refused_before_anything_is_written(
    trained: dict, forty_test_images: Path, tmp_path: Path
):
    root = _site_folder(tmp_path, forty_test_images)
    with pytest.raises(InputValueError, match="spec95 asks for a specificity of 95%"):
        recalibrate(compose_recalibrate(tmp_path, trained["ckpt"], root, "rule=spec95"))
    assert not (tmp_path / "recal" / "checkpoints").exists()


def test_the_site_must_be_named(tmp_path: Path):
    """Without data.root, the training run's own folder must not stand in for the site (the
    check comes before the checkpoint is read)."""
    overrides = [f"ckpt_path={tmp_path / 'any.ckpt'}", f"paths.root_dir={tmp_path}"]
    cfg = compose("recalibrate", overrides, output_dir=tmp_path / "recal")
    with pytest.raises(InputValueError, match="needs the site's labelled images: data.root="):
        recalibrate(cfg)
