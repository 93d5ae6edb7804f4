"""pneumonia-compare: DeLong's test checked against a brute-force computation over all
positive-negative pairs, McNemar against a hand count, the paired bootstrap, and the command on
two predictions.csv files and on a checkpoint."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

from pneumonia.compare import main
from pneumonia.decision.predictions import prediction_rows, write_predictions
from pneumonia.evaluation.comparison import delong, mcnemar, paired_bootstrap

NAMES = ["NORMAL", "PNEUMONIA"]


def brute_force_delong(targets: list[int], a: list[float], b: list[float]) -> dict:
    """DeLong et al. (1988) as written: the Mann-Whitney kernel over every positive-negative
    pair, the structural components V10 and V01, S = S10/m + S01/n, z and its normal p."""

    def psi(x: float, y: float) -> float:
        return 1.0 if x > y else 0.5 if x == y else 0.0

    pos = [i for i, t in enumerate(targets) if t]
    neg = [j for j, t in enumerate(targets) if not t]
    m, n = len(pos), len(neg)
    aucs, v10, v01 = [], [], []
    for scores in (a, b):
        kernel = [[psi(scores[i], scores[j]) for j in neg] for i in pos]
        aucs.append(sum(map(sum, kernel)) / (m * n))
        v10.append([sum(row) / n for row in kernel])
        v01.append([sum(kernel[i][j] for i in range(m)) / m for j in range(n)])

    def cov(u: list[float], w: list[float], mu: float, mw: float) -> float:
        return sum((x - mu) * (y - mw) for x, y in zip(u, w, strict=True)) / (len(u) - 1)

    s = [[cov(v10[r], v10[q], aucs[r], aucs[q]) / m + cov(v01[r], v01[q], aucs[r], aucs[q]) / n
          for q in range(2)] for r in range(2)]  # fmt: skip
    var = s[0][0] + s[1][1] - 2 * s[0][1]
    z = (aucs[1] - aucs[0]) / math.sqrt(var)
    return {"auroc": aucs, "covariance": s, "var": var, "z": z,
            "p": math.erfc(abs(z) / math.sqrt(2))}  # fmt: skip


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_delong_matches_a_brute_force_computation_with_ties(seed: int) -> None:
    rng = random.Random(seed)
    targets = [int(rng.random() < 0.45) for _ in range(40)]
    targets[:4] = [0, 0, 1, 1]  # both classes, at least twice
    # scores on a coarse grid: many ties within a model, between classes and between models
    a = [round(min(1, max(0, 0.3 + 0.3 * t + rng.gauss(0, 0.25))), 1) for t in targets]
    b = [round(min(1, max(0, 0.25 + 0.45 * t + rng.gauss(0, 0.2))), 1) for t in targets]
    assert len(set(a)) < len(a) / 3  # ties there are
    expected = brute_force_delong(targets, a, b)
    got = delong(np.array(targets), np.array(a), np.array(b))
    assert got["auroc"] == pytest.approx(expected["auroc"], abs=1e-12)
    assert np.allclose(got["covariance"], expected["covariance"], atol=1e-14)
    assert got["se"] == pytest.approx(math.sqrt(expected["var"]), rel=1e-9)
    assert got["z"] == pytest.approx(expected["z"], rel=1e-9)
    assert got["p"] == pytest.approx(expected["p"], rel=1e-9)
    assert 0 < got["p"] < 1
    half = 1.959963984540054 * math.sqrt(expected["var"])
    diff = expected["auroc"][1] - expected["auroc"][0]
    assert (got["ci_low"], got["ci_high"]) == pytest.approx((diff - half, diff + half))
    # and the brute-force AUROC is the AUROC torchmetrics computes
    import torch
    from torchmetrics.functional.classification import binary_auroc

    for scores, auroc in zip((a, b), got["auroc"], strict=True):
        tm = binary_auroc(torch.tensor(scores, dtype=torch.float64), torch.tensor(targets))
        assert auroc == pytest.approx(float(tm), abs=1e-6)


def test_delong_of_a_model_with_itself_is_no_difference() -> None:
    targets = np.array([0, 1, 0, 1, 1, 0, 1])
    probs = np.array([0.1, 0.8, 0.4, 0.4, 0.9, 0.2, 0.6])
    got = delong(targets, probs, probs.copy())
    assert (got["difference"], got["z"], got["p"]) == (0.0, None, 1.0)
    assert (got["ci_low"], got["ci_high"]) == (0.0, 0.0)


def test_mcnemar_counts_and_p_match_a_hand_computation() -> None:
    # 20 images: both right on 9, only A right on 7 (b), only B right on 2 (c), both wrong on 2
    targets = np.array([1, 0] * 10)
    right_a = np.array([True] * 16 + [False] * 4)
    right_b = np.array([True] * 9 + [False] * 7 + [True] * 2 + [False] * 2)
    predicted_a = np.where(right_a, targets, 1 - targets).astype(bool)
    predicted_b = np.where(right_b, targets, 1 - targets).astype(bool)
    got = mcnemar(targets, predicted_a, predicted_b)
    assert (got["both_right"], got["b"], got["c"], got["both_wrong"]) == (9, 7, 2, 2)
    # exact two-sided binomial: 2 P(X <= 2), X ~ Bin(9, 1/2) = 2 (1 + 9 + 36) / 512
    assert got["p"] == pytest.approx(92 / 512)
    assert got["accuracy"] == pytest.approx([16 / 20, 11 / 20])
    same = mcnemar(targets, predicted_a, predicted_a)
    assert (same["b"], same["c"], same["p"]) == (0, 0, 1.0)


def test_the_paired_bootstrap_holds_the_difference_and_narrows_when_models_agree() -> None:
    rng = np.random.default_rng(0)
    targets = (rng.random(300) < 0.5).astype(int)
    a = targets * 1.0 + rng.normal(0, 1.0, 300)
    close = a + rng.normal(0, 0.1, 300)  # nearly A's scores
    other = targets * 1.2 + rng.normal(0, 1.0, 300)  # a model of its own
    widths = {}
    for name, b in (("close", close), ("other", other)):
        got = paired_bootstrap(targets, a, b, resamples=400, seed=3)
        observed = delong(targets, a, b)["difference"]
        assert got["ci_low"] < observed < got["ci_high"]
        assert got["skipped"] == 0
        widths[name] = got["ci_high"] - got["ci_low"]
        assert got == paired_bootstrap(targets, a, b, resamples=400, seed=3)  # seeded
    # the same images in every resample: agreeing models' differences barely move
    assert widths["close"] < widths["other"] / 4
    same = paired_bootstrap(targets, a, a, resamples=50)
    assert (same["ci_low"], same["ci_high"]) == (0.0, 0.0)


def predictions_csv(path: Path, files: list[str], targets: list[int], probs: list, **kw) -> Path:
    """A predictions.csv as pneumonia-evaluate writes it."""
    rows = prediction_rows(files, probs, threshold=0.5, class_names=NAMES, positive_index=1,
                           targets=targets, **kw)  # fmt: skip
    write_predictions(path, rows)
    return path


def two_models(n: int = 60) -> tuple[list[str], list[int], list, list]:
    rng = random.Random(7)
    files = [f"/data/test/{'PNEUMONIA' if i % 2 else 'NORMAL'}/img{i:03d}.jpeg" for i in range(n)]
    targets = [i % 2 for i in range(n)]
    a = [min(1.0, max(0.0, 0.35 + 0.3 * t + rng.gauss(0, 0.25))) for t in targets]
    b = [min(1.0, max(0.0, 0.3 + 0.4 * t + rng.gauss(0, 0.1))) for t in targets]  # better
    return files, targets, a, b


def test_the_command_compares_two_predictions_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    files, targets, a, b = two_models()
    b[5] = None  # an image B could not read: left out of both
    path_a = predictions_csv(tmp_path / "a.csv", files, targets, a)
    path_b = predictions_csv(tmp_path / "b.csv", files, targets, b, errors={5: "truncated"})
    out = tmp_path / "out"
    caplog.set_level("INFO")
    assert main([str(path_a), str(path_b), "--out", str(out), "--resamples", "300"]) == 0
    result = json.loads((out / "compare.json").read_text())
    assert result["num_images"] == 59
    assert result["left_out"] == [{"file": files[5], "model": "B", "error": "truncated"}]
    assert result["positive_class"] == "PNEUMONIA"
    kept = [i for i in range(60) if i != 5]
    t, pa, pb = (np.array([v[i] for i in kept]) for v in (targets, a, b))
    pa, pb = pa.round(6), pb.round(6)  # what the CSV holds
    expected = brute_force_delong(t.tolist(), pa.tolist(), pb.tolist())
    assert [result["models"][m]["auroc"] for m in "AB"] == pytest.approx(expected["auroc"])
    assert result["difference"] == pytest.approx(expected["auroc"][1] - expected["auroc"][0])
    assert result["delong"]["p"] == pytest.approx(expected["p"], rel=1e-9)
    boot = result["bootstrap"]
    assert boot["ci_low"] < result["difference"] < boot["ci_high"]
    assert boot["resamples"] == 300
    hand = mcnemar(t, pa > 0.5, pb > 0.5)
    assert result["mcnemar"] == {**hand, "accuracy": pytest.approx(hand["accuracy"])}
    assert result["models"]["A"]["threshold"] == 0.5
    assert result["summary"] in caplog.text
    page = (out / "compare.md").read_text()
    for row in ("| A | ", "| B | ", "| B - A |", "| **A right** |", "| **A wrong** |"):
        assert row in page
    assert result["summary"] in page
    assert files[5] in page  # the image left out is named
    assert "![ROC curves of A and B](roc_compare.png)" in page
    assert (out / "roc_compare.png").stat().st_size > 1000
    # B is the better model here, by more than noise
    assert result["delong"]["p"] < 0.05
    assert result["difference"] > 0
    assert result["summary"].startswith(
        f"B's AUROC is higher than A's by {result['difference']:.3f}"
    )


def test_different_images_or_bad_inputs_are_refused_with_nothing_written(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    files, targets, a, b = two_models()
    path_a = predictions_csv(tmp_path / "a.csv", files, targets, a)
    # B: three of A's images missing, one other image
    fewer = predictions_csv(tmp_path / "b.csv", files[3:] + ["/data/x.jpeg"], targets[3:] + [0],
                            b[3:] + [0.2])  # fmt: skip
    relabelled = predictions_csv(tmp_path / "c.csv", files, [1 - targets[0], *targets[1:]], b)
    unlabelled = tmp_path / "predict.csv"  # pneumonia-predict's: no true class
    write_predictions(unlabelled, prediction_rows(files, b, threshold=0.5, class_names=NAMES,
                                                  positive_index=1))  # fmt: skip
    other = tmp_path / "metrics.csv"
    other.write_text("epoch,val/auroc\n1,0.9\n")
    out = tmp_path / "out"
    cases = {
        fewer: ["A has 60, B has 58, 57 in both, 3 only in A, 1 only in B", "--data-root"],
        relabelled: ["1 image(s) have different labels", files[0]],
        unlabelled: ["without a true class", "pneumonia-evaluate"],
        other: ["not a predictions.csv", "no column file, label"],
        tmp_path / "missing.csv": ["does not exist"],
    }
    for path, says in cases.items():
        assert main([str(path_a), str(path), "--out", str(out), "--resamples", "10"]) == 1, path
        err = capsys.readouterr().err
        for words in says:
            assert words in err, (path, err)
    assert not out.exists()


def test_a_checkpoint_compared_with_itself_differs_by_nothing(
    trained: dict, tmp_path: Path
) -> None:
    import shutil

    a, b, out = trained["ckpt"], tmp_path / "copy.ckpt", tmp_path / "out"
    shutil.copy(a, b)  # another file: scored a second time
    argv = [str(a), str(b), "--out", str(out), "--data-root", str(trained["root"]),
            "--resamples", "50", "--accelerator", "cpu", "--precision", "32-true"]  # fmt: skip
    assert main(argv) == 0
    result = json.loads((out / "compare.json").read_text())
    assert result["num_images"] == len(list((trained["root"] / "test").rglob("*.jpeg")))
    # no difference has no z: p is 1 and both intervals are the point 0
    assert (result["difference"], result["delong"]["z"], result["delong"]["p"]) == (0, None, 1)
    assert (result["delong"]["ci_low"], result["delong"]["ci_high"]) == (0, 0)
    assert (result["bootstrap"]["ci_low"], result["bootstrap"]["ci_high"]) == (0, 0)
    assert (result["mcnemar"]["b"], result["mcnemar"]["c"], result["mcnemar"]["p"]) == (0, 0, 1)
    assert "within noise" in result["summary"]
    # each checkpoint's rows are kept as its predictions.csv: the same scores twice
    assert (out / "predictions_a.csv").read_text() == (out / "predictions_b.csv").read_text()
