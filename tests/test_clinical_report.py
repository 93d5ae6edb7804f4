"""What a reviewer asks of an evaluation: can the probability be read as one (ECE, Brier and
its decomposition, calibration slope and intercept, before and after the temperature), and
what are the operating points (sensitivity at a fixed specificity, PPV and NPV at a clinic's
prevalence). Each number checked against a computation written here."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from pneumonia.decision.calibration import (
    brier_decomposition,
    calibrate,
    calibration_line,
    reliability,
)
from pneumonia.decision.predictions import Predictions
from pneumonia.decision.report import calibration_report, operating_points
from pneumonia.decision.rules import Decision


def _drawn(n: int, seed: int, sharpen: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels drawn from probabilities p; the probabilities given are p's logit times
    ``sharpen`` (1: calibrated; 2: overconfident)."""
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(n, generator=g, dtype=torch.float64) * 0.98 + 0.01
    y = (torch.rand(n, generator=g, dtype=torch.float64) < p).long()
    return torch.sigmoid(torch.logit(p) * sharpen), y


def test_ece_matches_a_hand_computation_over_ten_equal_width_bins() -> None:
    probs, targets = _drawn(500, 1, sharpen=1.7)
    p, y = probs.tolist(), targets.tolist()
    total = 0.0
    for k in range(10):
        inside = [(a, b) for a, b in zip(p, y, strict=True) if min(int(a * 10), 9) == k]
        if inside:
            gap = abs(
                sum(a for a, _ in inside) / len(inside) - sum(b for _, b in inside) / len(inside)
            )
            total += len(inside) / len(p) * gap
    curve = reliability(probs, targets)
    assert curve["ece"] == pytest.approx(total, abs=1e-5)
    assert sum(b["count"] for b in curve["bins"]) == 500
    assert curve["binning"] == "10 equal-width bins of the probability"


def test_brier_decomposition_adds_up_and_matches_murphys_terms() -> None:
    probs, targets = _drawn(400, 2, sharpen=1.5)
    parts = brier_decomposition(probs, targets)
    assert parts["brier"] == pytest.approx(torch.mean((probs - targets) ** 2).item())
    assert parts["reliability"] - parts["resolution"] + parts["uncertainty"] + parts[
        "within"
    ] == pytest.approx(parts["brier"])
    # probabilities that sit at one value per bin: binning loses nothing, Murphy's terms by hand
    centres = (torch.floor(probs * 10) + 0.5) / 10
    exact = brier_decomposition(centres, targets)
    assert exact["within"] == pytest.approx(0, abs=1e-12)
    base = targets.double().mean().item()
    rel = res = 0.0
    for c in torch.unique(centres):
        inside = centres == c
        share, observed = inside.double().mean().item(), targets[inside].double().mean().item()
        rel += share * (c.item() - observed) ** 2
        res += share * (observed - base) ** 2
    assert (exact["reliability"], exact["resolution"]) == pytest.approx((rel, res))
    assert exact["uncertainty"] == pytest.approx(base * (1 - base))


def test_calibration_slope_and_intercept_are_the_logistic_fit() -> None:
    probs, targets = _drawn(3000, 3, sharpen=2.0)  # overconfident: slope about 1/2
    line = calibration_line(probs, targets)
    x, y = torch.logit(probs).numpy(), targets.numpy()

    def loss(beta: np.ndarray) -> float:
        z = beta[0] + beta[1] * x
        return float(np.sum(np.logaddexp(0, z) - y * z))

    fitted = minimize(loss, np.array([0.0, 1.0]), method="BFGS").x
    assert (line["intercept"], line["slope"]) == pytest.approx(tuple(fitted), abs=1e-4)
    assert 0.4 < line["slope"] < 0.6
    large = minimize(lambda a: loss(np.array([a[0], 1.0])), np.array([0.0]), method="BFGS").x
    assert line["in_the_large"] == pytest.approx(large[0], abs=1e-4)
    calibrated = calibration_line(*_drawn(3000, 4))
    assert calibrated["slope"] == pytest.approx(1.0, abs=0.15)
    assert math.isnan(calibration_line(probs, torch.ones_like(targets))["slope"])


def test_the_report_calibrates_before_and_after_the_stored_temperature() -> None:
    probs, targets = _drawn(300, 5, sharpen=2.5)
    scores = torch.logit(probs).float()
    decision = Decision("bayes", 0.5, 1.0, 0.5, 2.5, 0.5, 0.9)
    preds = Predictions(calibrate(scores, temperature=2.5), targets, 0.5, scores=scores)
    cal = calibration_report(preds, decision)
    before = reliability(calibrate(scores), targets)["ece"]
    after = reliability(calibrate(scores, temperature=2.5), targets)["ece"]
    assert cal["before_temperature"]["ece"] == pytest.approx(before)
    assert cal["after_temperature"]["ece"] == pytest.approx(after)
    assert after < before  # the temperature undid the sharpening
    assert cal["after_temperature"]["slope"] == pytest.approx(1.0, abs=0.25)
    assert cal["before_temperature"]["slope"] < 0.6


def test_operating_points_and_predictive_values_by_hand() -> None:
    from pneumonia.decision.rules import operating_thresholds

    probs, targets = _drawn(200, 6)
    probs = probs.float()
    preds = Predictions(probs, targets, 0.5)
    points = operating_points(preds, prevalence=0.05, resamples=200, confidence=0.95, seed=0)
    p, y = probs.tolist(), targets.tolist()
    pos, neg = (
        [a for a, b in zip(p, y, strict=True) if b],
        [a for a, b in zip(p, y, strict=True) if not b],
    )

    def sens_spec(t: float) -> tuple[float, float]:  # the project's rule: PNEUMONIA above t
        return sum(a > t for a in pos) / len(pos), sum(a <= t for a in neg) / len(neg)

    cuts = [0.0, *sorted(set(p))]
    for level in (0.90, 0.95):
        best_sens = max(sens_spec(t)[0] for t in cuts if sens_spec(t)[1] >= level)
        best_spec = max(sens_spec(t)[1] for t in cuts if sens_spec(t)[0] >= level)
        got = points[f"sensitivity_at_specificity_{round(level * 100)}"]
        assert got["value"] == pytest.approx(best_sens, abs=1e-6)
        assert got["ci_low"] <= got["value"] <= got["ci_high"]
        assert sens_spec(got["threshold"])[1] >= level  # its threshold reaches the specificity
        spec = points[f"specificity_at_sensitivity_{round(level * 100)}"]
        assert spec["value"] == pytest.approx(best_spec, abs=1e-6)
        named = operating_thresholds(probs, targets)  # one algorithm for both tables
        assert got["threshold"] == named[f"spec{round(level * 100)}"]["threshold"]
        assert spec["threshold"] == named[f"sens{round(level * 100)}"]["threshold"]
    sens = sum(a > 0.5 for a in pos) / len(pos)
    spec = sum(a <= 0.5 for a in neg) / len(neg)
    ppv = sens * 0.05 / (sens * 0.05 + (1 - spec) * 0.95)
    npv = spec * 0.95 / (spec * 0.95 + (1 - sens) * 0.05)
    at = points["at_prevalence"]
    assert (at["ppv"]["value"], at["npv"]["value"]) == pytest.approx((ppv, npv), abs=1e-5)
    assert at["ppv"]["ci_low"] <= ppv <= at["ppv"]["ci_high"]
    assert "at_prevalence" not in operating_points(
        preds, None, resamples=10, confidence=0.9, seed=0
    )


@pytest.mark.slow
def test_evaluate_writes_calibration_operating_points_and_the_reliability_figure(
    trained: dict, tmp_path: Path
) -> None:
    from pneumonia.evaluate import evaluate

    from .test_evaluate import compose_eval

    evaluate(compose_eval(tmp_path, trained["ckpt"], "prevalence=0.05", "bootstrap.resamples=50"))
    out = tmp_path / "eval"
    result = json.loads((out / "report.json").read_text())
    assert result["operating_points"]["at_prevalence"]["prevalence"] == 0.05
    assert set(result["calibration"]) >= {"before_temperature", "after_temperature", "binning"}
    text = (out / "report.md").read_text()
    assert "## Calibration" in text
    assert "## Operating points" in text
    for name, label in (
        ("sensitivity_at_specificity_90", "Sensitivity at specificity >= 90%"),
        ("specificity_at_sensitivity_95", "Specificity at sensitivity >= 95%"),
    ):
        threshold = result["operating_points"][name]["threshold"]  # the row shows its numbers
        (row,) = [line for line in text.splitlines() if line.startswith(f"| {label} |")]
        assert row.endswith(f"| {threshold:.3f} |")
    assert "At a PNEUMONIA prevalence of 5.0%" in text
    assert (out / "reliability.png").stat().st_size > 1000


def test_subgroups_by_pathogen_and_attributes_with_a_warning_for_small_ones() -> None:
    from pneumonia.decision.subgroups import subgroup_report

    g = torch.Generator().manual_seed(7)
    files, targets, attributes = [], [], []
    for i in range(120):
        kind = ("NORMAL", "bacteria", "virus")[i % 3]
        files.append(Path(f"test/{'NORMAL' if kind == 'NORMAL' else 'PNEUMONIA'}/"
                          f"person{i}_{kind.lower()}_1.jpeg"))  # fmt: skip
        targets.append(0 if kind == "NORMAL" else 1)
        attributes.append({"sex": "MF"[i % 2], "age": [5, 30, 50, 70][i % 4] + i % 3,
                           "view": "AP" if i < 110 else "PA"})  # fmt: skip
    targets = torch.tensor(targets)
    probs = (0.3 + 0.4 * targets + 0.3 * torch.rand(120, generator=g)).clamp(0, 1)
    probs[1::3] -= 0.25  # bacterial pneumonia scored lower: missed more often
    preds = Predictions(probs, targets, 0.5, files=files, attributes=attributes)
    report = subgroup_report(preds, min_size=15, resamples=50, confidence=0.9, seed=0)

    assert set(report) == {"pathogen", "sex", "age_band", "view"}
    for kind, rows in (("bacterial", range(1, 120, 3)), ("viral", range(2, 120, 3))):
        group = report["pathogen"][kind]
        called = sum(float(probs[i]) > 0.5 for i in rows)
        assert group["num_images"] == group["num_pneumonia"] == 40
        assert group["metrics"]["recall"]["value"] == pytest.approx(called / 40)
        assert group["metrics"]["specificity"] is None  # no NORMAL image: undefined
        assert group["metrics"].get("auroc") is None  # one class: no ranking metric
    assert report["pathogen"]["bacterial"]["metrics"]["recall"]["value"] < 1.0
    assert {k: v["num_images"] for k, v in report["age_band"].items()} == {
        "0-17": 30, "18-39": 30, "40-64": 30, "65+": 30}  # fmt: skip
    male = [i for i in range(120) if i % 2 == 0]  # "MF"[i % 2]
    expected = sum((float(probs[i]) > 0.5) == bool(targets[i]) for i in male) / len(male)
    assert report["sex"]["M"]["metrics"]["accuracy"]["value"] == pytest.approx(expected)
    small = report["view"]["PA"]
    assert small["num_images"] == 10
    assert "fewer than 15" in small["warning"]
    assert "metrics" not in small
    assert subgroup_report(Predictions(probs, targets, 0.5), resamples=10, confidence=0.9,
                           seed=0) is None  # fmt: skip
    from pneumonia.evaluation.report_md import _subgroup_lines

    page = "\n".join(_subgroup_lines(report, "90%"))
    assert "| PA | 10 | " in page
    assert "fewer than 15" in page
    assert "**Bacterial and viral pneumonia" in page


def test_operating_thresholds_are_the_extreme_thresholds_that_reach_each_level() -> None:
    from pneumonia.decision.rules import operating_thresholds

    probs, targets = _drawn(150, 8)
    probs = torch.round(probs * 40) / 40  # ties, as real probabilities have
    table = operating_thresholds(probs, targets)
    p, y = probs.tolist(), targets.tolist()
    candidates = sorted({0.0, *p})

    def rates(t: float) -> tuple[float, float]:  # "PNEUMONIA above t"
        pos = [a for a, b in zip(p, y, strict=True) if b]
        neg = [a for a, b in zip(p, y, strict=True) if not b]
        return sum(a > t for a in pos) / len(pos), sum(a <= t for a in neg) / len(neg)

    for level in (90, 95):
        spec = min(t for t in candidates if rates(t)[1] >= level / 100)
        sens = max(t for t in candidates if rates(t)[0] >= level / 100)
        assert table[f"spec{level}"]["threshold"] == pytest.approx(spec)
        assert table[f"sens{level}"]["threshold"] == pytest.approx(sens)
        assert table[f"spec{level}"]["specificity"] == pytest.approx(rates(spec)[1])
        assert table[f"sens{level}"]["sensitivity"] == pytest.approx(rates(sens)[0])
    assert operating_thresholds(probs, torch.ones_like(targets)) == {}


def test_each_named_threshold_says_how_well_its_images_pin_it_down() -> None:
    from pneumonia.decision.rules import operating_thresholds, uncertain_thresholds

    # 5 negatives, all below 300 positives: 100% specificity on 5 images says little
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.45] + [0.6 + 0.001 * i for i in range(300)])
    table = operating_thresholds(probs, torch.tensor([0] * 5 + [1] * 300))
    spec = table["spec95"]
    assert (spec["images"], spec["specificity"]) == (5, 1.0)
    # the exact interval of 5 out of 5 has the closed form ((1 - 0.95) / 2) ** (1 / 5)
    assert spec["interval"] == [pytest.approx(0.025 ** (1 / 5)), 1.0]
    sens = table["sens95"]
    assert (sens["images"], sens["sensitivity"]) == (300, 0.95)
    assert sens["interval"][0] < 0.95 < sens["interval"][1]
    warning = uncertain_thresholds(table, ("NORMAL", "PNEUMONIA"))
    assert "spec90 (5 NORMAL: specificity 48%-100%)" in warning
    assert "spec95 (5 NORMAL: specificity 48%-100%)" in warning
    assert "sens" not in warning  # 95% of 300 PNEUMONIA images holds within 10 points
    table["sens95"]["interval"] = [0.84, 0.99]
    assert "sens95 (300 PNEUMONIA: sensitivity 84%-99%)" in uncertain_thresholds(
        table, ("NORMAL", "PNEUMONIA")
    )
    del table["spec90"], table["spec95"], table["sens95"]
    assert uncertain_thresholds(table, ("NORMAL", "PNEUMONIA")) is None


@pytest.mark.slow
def test_predict_selects_a_named_threshold_stored_in_the_checkpoint(
    trained: dict, tmp_path: Path, tiny_root: Path
) -> None:
    import csv

    from pneumonia.config import compose
    from pneumonia.errors import InputValueError
    from pneumonia.models.checkpoint import load_checkpoint
    from pneumonia.predict import predict

    table = load_checkpoint(trained["ckpt"]).thresholds
    assert set(table) == {"spec90", "spec95", "sens90", "sens95"}
    assert trained["metrics"]["thresholds"] == table

    def run(*overrides: str) -> list[dict]:
        given = [f"ckpt_path={trained['ckpt']}", f"input={tiny_root / 'test'}", "precision=32-true"]
        out = tmp_path / "_".join(["p", *overrides])  # a folder each: one owner per folder
        predict(compose("predict", [*given, *overrides], output_dir=out))
        with open(out / "predictions.csv") as f:
            return list(csv.DictReader(f))

    rows = run("threshold=sens95")
    assert [float(r["threshold"]) for r in rows] == pytest.approx(
        [table["sens95"]["threshold"]] * len(rows), abs=5e-7
    )  # predictions.csv writes six decimals
    called = [r["prediction"] == "PNEUMONIA" for r in rows]
    assert called == [float(r["probability"]) > table["sens95"]["threshold"] for r in rows]
    with pytest.raises(InputValueError, match=r"are sens90, sens95, spec90, spec95"):
        run("threshold=spec99")
