"""``report.md``: an evaluation's report as a page a reader takes in at a glance."""

from __future__ import annotations

from typing import Any

from pneumonia.decision import Decision
from pneumonia.inference import WARN_SHARE

METRIC_LABELS = {
    "accuracy": "Accuracy",
    "precision": "Precision (PPV)",
    "recall": "Recall (sensitivity)",
    "specificity": "Specificity",
    "f1": "F1",
    "auroc": "AUROC",
    "average_precision": "Average precision",
}


def markdown(result: dict[str, Any]) -> str:
    """``report.md``: the report of :func:`evaluate_checkpoint` as a table.

    The columns at 0.5 are left out where the threshold is 0.5: they would repeat the first.
    """
    conf = f"{result['bootstrap']['confidence']:.0%}"
    t = result["threshold"]
    at_half = result["metrics_at_0.5"] if t != 0.5 else None
    head = f"| metric | at threshold {t:.3f} | {conf} CI |"
    lines = [
        f"# Evaluation of `{result['checkpoint']}`",
        "",
        f"Split **{result['split']}** of `{result['data_root']}`: {result['num_images']} images, "
        f"{result['num_pneumonia']} PNEUMONIA. Test-time augmentation: "
        f"{'small rotations averaged' if result['tta'] else 'none'}.",
        f"Intervals: {conf} percentile bootstrap, {result['bootstrap']['resamples']} resamples.",
        Decision(**result["decision"]).describe(result.get("prior_shift")),
        "",
        head + (f" at 0.5 | {conf} CI |" if at_half else ""),
        "|---|---|---|" + ("---|---|" if at_half else ""),
    ]
    for name, label in METRIC_LABELS.items():
        row = f"| {label} | {_cells(result['metrics'][name])} |"
        if at_half is not None:
            row += f" {_cells(at_half[name])} |" if name in at_half else " (threshold-free) | |"
        lines.append(row)
    (tn, fp), (fn, tp) = result["confusion_matrix"]
    lines += ["", f"Confusion matrix at {t:.3f}: TN {tn}, FP {fp}, FN {fn}, TP {tp}.", ""]
    lines += _shift_lines(result.get("shift"), conf)
    lines += _source_lines(result.get("by_source"), conf)
    lines += ["Files: `confusion_matrix.png`, `roc.png`, `pr.png`, `predictions.csv`.", ""]
    return "\n".join(lines)


def _shift_lines(shift: dict[str, Any] | None, conf: str) -> list[str]:
    """report.md's section on the images unlike the training images."""
    if shift is None:
        return ["No shift reference in this checkpoint: nothing says whether these images look "
                "like the training images.", ""]  # fmt: skip
    share = shift["share_flagged"]
    lines = [
        "## Images unlike the training images",
        "",
        f"{shift['num_flagged']} images ({share:.0%}) are flagged: their shift score "
        f"({shift['method']}) is above {shift['threshold']:.4g}, which flags "
        f"{shift['flag_rate']:.0%} of the validation images.",
    ]
    if share > WARN_SHARE:
        lines.append(
            f"**{share:.0%} of these images do not look like the images this model was trained "
            "on: the figures above may not hold for them.**"
        )
    lines += ["", f"| metric | in distribution | {conf} CI | flagged | {conf} CI |",
              "|---|---|---|---|---|"]  # fmt: skip
    for name, label in METRIC_LABELS.items():
        cells = [_cells((shift[group] or {}).get(name)) for group in ("in_distribution", "flagged")]
        lines.append(f"| {label} | {cells[0]} | {cells[1]} |")
    return [*lines, ""]


def _source_lines(sources: dict[str, Any] | None, conf: str) -> list[str]:
    """report.md's section per source, where the images come from several."""
    if not sources:
        return []
    lines = ["## By source", "", f"| source | images | PNEUMONIA | AUROC | {conf} CI | accuracy "
             f"| {conf} CI | sensitivity | {conf} CI | specificity | {conf} CI |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, group in sources.items():
        m = group["metrics"]
        cells = " | ".join(_cells(m[k]) for k in ("auroc", "accuracy", "recall", "specificity"))
        lines.append(f"| {name} | {group['num_images']} | {group['num_pneumonia']} | {cells} |")
    return [*lines, ""]


def _cells(m: dict[str, float] | None) -> str:
    """A metric's value and interval, or a dash where the images do not define it."""
    if m is None:
        return "- | -"
    return f"{m['value']:.3f} | {m['ci_low']:.3f} - {m['ci_high']:.3f}"
