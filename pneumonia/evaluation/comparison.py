"""Two models on the same images: is B better than A, or is the difference noise?

- the AUROC difference with DeLong's test (DeLong, DeLong & Clarke-Pearson 1988), computed by
  the fast algorithm of Sun & Xu (2014): midranks instead of all positive-negative pairs, so
  O(n log n); and a paired-bootstrap percentile interval (the same resampled images for both);
- McNemar's exact test at each model's stored threshold (its ``prediction`` column);
- the rows of two ``predictions.csv`` matched image by image (the ``file`` column), refused
  when the images or their labels differ.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import binomtest, norm, rankdata

from pneumonia.decision.metrics import BOOTSTRAP_RESAMPLES, CONFIDENCE
from pneumonia.decision.predictions import positive_class
from pneumonia.errors import InputValueError

NAMES = ("A", "B")


@dataclass
class Paired:
    """Two models' scores on the same labelled images, row i the same image for both."""

    files: list[str]
    targets: np.ndarray  # (N,) 1 = the positive class
    probs: tuple[np.ndarray, np.ndarray]  # (N,) each model's positive-class probability
    predicted: tuple[np.ndarray, np.ndarray]  # (N,) bool: each model's stored decision
    thresholds: tuple[float | None, float | None]  # None: the rows hold several
    positive: str
    left_out: list[dict[str, str]] = field(default_factory=list)  # file, model, error


def _usable(table: pd.DataFrame, name: str) -> tuple[pd.DataFrame, dict[str, str]]:
    """The rows with a probability (numbers parsed), and file -> error for the others."""
    table = table.map(lambda v: "" if v is None or v != v else str(v))  # text, as in the CSV
    table["error"] = table["error"].str.strip() if "error" in table else ""
    twice = table["file"][table["file"].duplicated()].tolist()
    if twice:
        raise InputValueError(
            f"{name} lists {len(twice)} image(s) twice (e.g. {twice[0]}): one row per image."
        )
    failed = (table["error"] != "") | (table["probability"].str.strip() == "")
    errors = dict(zip(table["file"][failed], table["error"][failed].replace("", "no probability"),
                      strict=True))  # fmt: skip
    table = table[~failed].copy()
    for column in ("probability", "threshold"):
        numbers = pd.to_numeric(table[column], errors="coerce")
        if numbers.isna().any():
            row = table[numbers.isna()].iloc[0]
            raise InputValueError(
                f"{name}: {column} {row[column]!r} of {row['file']} is not a number; a "
                "predictions.csv holds numbers there."
            )
        table[column] = numbers.astype(float)
    if (table["label"].str.strip() == "").any():
        raise InputValueError(
            f"{name} has rows without a true class (label is empty): comparing needs labelled "
            "images, as pneumonia-evaluate writes them (pneumonia-predict does not know the "
            "truth)."
        )
    return table, errors


def pair(a: pd.DataFrame, b: pd.DataFrame, names: Sequence[str] = NAMES) -> Paired:
    """Two ``predictions.csv`` tables matched by ``file``; rows with an error in either are
    named and left out of both.

    Raises:
        InputValueError: the images differ, a label or the positive class disagrees, or fewer
            than two images of a class remain.
    """
    files = [set(t["file"]) for t in (a, b)]
    if files[0] != files[1]:
        only = [sorted(files[0] - files[1]), sorted(files[1] - files[0])]
        examples = "; ".join(
            f"e.g. only in {n}: {o[0]}" for n, o in zip(names, only, strict=True) if o
        )
        raise InputValueError(
            f"{names[0]} and {names[1]} are not the same images: {names[0]} has "
            f"{len(files[0])}, {names[1]} has {len(files[1])}, {len(files[0] & files[1])} in "
            f"both, {len(only[0])} only in {names[0]}, {len(only[1])} only in {names[1]} "
            f"({examples}). Score both on one set: the same split and data folder (--split, "
            "--data-root), or two predictions.csv of one folder."
        )
    (ta, ea), (tb, eb) = _usable(a, names[0]), _usable(b, names[1])
    left_out = [{"file": f, "model": n, "error": e} for n, errs in zip(names, (ea, eb), strict=True)
                for f, e in sorted(errs.items())]  # fmt: skip
    both = ta.merge(tb, on="file", suffixes=("_a", "_b")).sort_values("file", kind="stable")
    differ = both[both["label_a"] != both["label_b"]]
    if len(differ):
        row = differ.iloc[0]
        raise InputValueError(
            f"{len(differ)} image(s) have different labels in {names[0]} and {names[1]} (e.g. "
            f"{row['file']}: {row['label_a']} against {row['label_b']}): the two files do not "
            "describe the same labelled images."
        )
    positives = [positive_class(t) for t in (ta, tb)]
    if positives[0] != positives[1]:
        raise InputValueError(
            f"{names[0]} predicts {positives[0]!r} above its threshold, {names[1]} "
            f"{positives[1]!r}: the two models do not share a positive class."
        )
    targets = (both["label_a"] == positives[0]).to_numpy().astype(np.int64)
    counts = int(targets.sum()), int(len(targets) - targets.sum())
    if len(targets) and not min(counts):  # a set of one class: a legitimate question, not ours
        only = str(both["label_a"].iloc[0])
        rate = "sensitivity" if counts[0] else "specificity"
        raise InputValueError(
            f"All {len(targets)} images are {only}: pneumonia-compare compares AUROCs, which "
            f"need images of both classes (two or more of each). For the {rate} on these "
            "images, read each model's, with its interval, in its pneumonia-evaluate report; to "
            "compare the two models, score both on a set holding both classes."
        )
    if min(counts) < 2:
        raise InputValueError(
            f"{len(targets)} images left ({counts[0]} {positives[0]}, {counts[1]} other): "
            "comparing AUROCs needs at least two images of each class."
        )
    thresholds = [both[f"threshold_{s}"] for s in "ab"]  # None where the rows hold several
    return Paired(
        files=both["file"].tolist(),
        targets=targets,
        probs=(both["probability_a"].to_numpy(), both["probability_b"].to_numpy()),
        predicted=tuple((both[f"prediction_{s}"] == positives[0]).to_numpy() for s in "ab"),
        thresholds=tuple(float(t.iloc[0]) if t.nunique() == 1 else None for t in thresholds),
        positive=positives[0],
        left_out=left_out,
    )


def _aurocs(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """The AUROC of each row of ``scores`` against the matching row of boolean ``targets``
    (Mann-Whitney through midranks)."""
    m = targets.sum(axis=-1)
    n = targets.shape[-1] - m
    ranks = rankdata(scores, axis=-1)
    return ((ranks * targets).sum(axis=-1) - m * (m + 1) / 2) / (m * n)


def delong(
    targets: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray, confidence: float = CONFIDENCE
) -> dict[str, Any]:
    """DeLong's test of AUROC(B) - AUROC(A) on the same images, by Sun & Xu's algorithm.

    With X the m positives' and Y the n negatives' scores, and T the midranks within X, within
    Y and within both (Z): AUROC = (sum T_Z over X - m(m+1)/2) / mn, the structural components
    V10 = (T_Z - T_X) / n over X and V01 = 1 - (T_Z - T_Y) / m over Y, and
    S = cov(V10) / m + cov(V01) / n; the difference has variance S_aa + S_bb - 2 S_ab.

    A difference without variance (the same scores, or differences that do not vary between
    images) has no z: its p is 1 when the AUROCs are equal, else 0, and its interval is the
    difference itself.
    """
    t = np.asarray(targets).astype(bool)
    m, n = int(t.sum()), int((~t).sum())
    scores = np.stack([np.asarray(probs_a, float), np.asarray(probs_b, float)])
    x, y = scores[:, t], scores[:, ~t]
    tz = rankdata(np.concatenate([x, y], axis=1), axis=1)
    auroc = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)
    v10 = (tz[:, :m] - rankdata(x, axis=1)) / n
    v01 = 1 - (tz[:, m:] - rankdata(y, axis=1)) / m
    s = np.cov(v10) / m + np.cov(v01) / n
    difference = float(auroc[1] - auroc[0])
    var = float(s[0, 0] + s[1, 1] - 2 * s[0, 1])
    quantile = float(norm.ppf(0.5 + confidence / 2))
    if var <= 1e-12 * max(s[0, 0] + s[1, 1], 1e-300):
        z, p, half = None, 1.0 if difference == 0 else 0.0, 0.0
    else:
        z = difference / var**0.5
        p, half = float(2 * norm.sf(abs(z))), quantile * var**0.5
    se = np.sqrt(np.diag(s))
    return {"auroc": auroc.tolist(), "covariance": s.tolist(), "difference": difference,
            "se": max(var, 0.0) ** 0.5, "z": z, "p": p, "ci_low": difference - half,
            "ci_high": difference + half,  # each AUROC's interval, cut to [0, 1]:
            "auroc_ci": np.stack([auroc - quantile * se, auroc + quantile * se], axis=1)
            .clip(0, 1).tolist()}  # fmt: skip


def paired_bootstrap(
    targets: np.ndarray,
    probs_a: np.ndarray,
    probs_b: np.ndarray,
    resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
    chunk: int = 100,
) -> dict[str, Any]:
    """Percentile intervals of AUROC(A), AUROC(B) and their difference over ``resamples``
    draws of the images with replacement, each draw the same images for both models (seeded:
    the same interval every time). Draws without both classes are skipped and counted."""
    t = np.asarray(targets).astype(bool)
    rng = np.random.default_rng(seed)
    drawn: list[np.ndarray] = []
    for start in range(0, resamples, chunk):
        idx = rng.integers(0, len(t), size=(min(chunk, resamples - start), len(t)))
        keep = t[idx].any(axis=1) & ~t[idx].all(axis=1)
        idx = idx[keep]
        drawn.append(np.stack([_aurocs(np.asarray(p)[idx], t[idx]) for p in (probs_a, probs_b)],
                              axis=1))  # fmt: skip
    aurocs = np.concatenate(drawn)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(aurocs[:, 1] - aurocs[:, 0], [alpha, 1 - alpha])
    return {"ci_low": float(low), "ci_high": float(high),
            "auroc_ci": np.quantile(aurocs, [alpha, 1 - alpha], axis=0).T.tolist(),
            "resamples": resamples, "skipped": resamples - len(aurocs), "confidence": confidence,
            "seed": seed}  # fmt: skip


def mcnemar(
    targets: np.ndarray, predicted_a: np.ndarray, predicted_b: np.ndarray
) -> dict[str, Any]:
    """McNemar's exact test: b images only A gets right, c only B; p is the two-sided binomial
    p of b among the b + c discordant images (1 when there are none)."""
    t = np.asarray(targets).astype(bool)
    right_a, right_b = np.asarray(predicted_a) == t, np.asarray(predicted_b) == t
    b, c = int((right_a & ~right_b).sum()), int((~right_a & right_b).sum())
    return {"both_right": int((right_a & right_b).sum()), "b": b, "c": c,
            "both_wrong": int((~right_a & ~right_b).sum()),
            "p": float(binomtest(b, b + c, 0.5).pvalue) if b + c else 1.0,
            "accuracy": [float(right_a.mean()), float(right_b.mean())]}  # fmt: skip


def compare(
    a: pd.DataFrame,
    b: pd.DataFrame,
    sources: Sequence[str] = NAMES,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> tuple[dict[str, Any], Paired]:
    """Two ``predictions.csv`` tables compared (``compare.json``), and the matched images."""
    paired = pair(a, b)
    test = delong(paired.targets, *paired.probs, confidence)
    boot = paired_bootstrap(paired.targets, *paired.probs, resamples, confidence, seed)
    agreement = mcnemar(paired.targets, *paired.predicted)
    models = {
        name: {
            "source": str(source),
            "threshold": paired.thresholds[i],
            "auroc": test["auroc"][i],
            "auroc_delong_ci": test["auroc_ci"][i],
            "auroc_bootstrap_ci": boot["auroc_ci"][i],
            "accuracy": agreement["accuracy"][i],
        }
        for i, (name, source) in enumerate(zip(NAMES, sources, strict=True))
    }
    result = {"models": models, "num_images": len(paired.files),
              "num_positive": int(paired.targets.sum()), "positive_class": paired.positive,
              "left_out": paired.left_out, "confidence": confidence,
              "difference": test["difference"],
              "delong": {k: test[k] for k in ("se", "z", "p", "ci_low", "ci_high", "covariance")},
              "bootstrap": boot, "mcnemar": agreement}  # fmt: skip
    result["summary"] = summary(result)
    return result, paired


def p_text(p: float) -> str:
    return "< 0.0001" if p < 1e-4 else f"= {p:.2g}"


def summary(result: dict[str, Any]) -> str:
    """The comparison in one plain sentence."""
    d, test, conf = result["difference"], result["delong"], f"{result['confidence']:.0%}"
    ci = f"{conf} CI {test['ci_low']:+.3f} to {test['ci_high']:+.3f}"
    if test["p"] < 1 - result["confidence"]:
        way = "higher" if d > 0 else "lower"
        return f"B's AUROC is {way} than A's by {abs(d):.3f} ({ci}); DeLong p {p_text(test['p'])}."
    return (
        f"The AUROC difference B - A = {d:+.3f} ({ci}) is within noise "
        f"(DeLong p {p_text(test['p'])})."
    )
