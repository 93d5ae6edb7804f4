"""``report.md``: an evaluation's report as a page a reader takes in at a glance."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pneumonia.decision.metrics import level_name
from pneumonia.decision.prior_shift import WARN_SHARE
from pneumonia.decision.rules import Decision
from pneumonia.reports.markup import md_code, md_text, md_url

METRIC_LABELS = {
    "accuracy": "Accuracy",
    "precision": "Precision (PPV)",
    "recall": "Recall (sensitivity)",
    "specificity": "Specificity",
    "f1": "F1",
    "auroc": "AUROC",
    "average_precision": "Average precision",
}

CALIBRATION_ROWS = (
    ("ECE", "ece"),
    ("Brier score", "brier"),
    ("&nbsp; reliability (lower is better)", "reliability"),
    ("&nbsp; resolution (higher is better)", "resolution"),
    ("&nbsp; uncertainty", "uncertainty"),
    ("NLL", "nll"),
    ("Calibration slope (1: calibrated, < 1: overconfident)", "slope"),
    ("Calibration intercept", "intercept"),
    ("Calibration in the large (slope held at 1)", "in_the_large"),
)


def evaluation_markdown(
    result: dict[str, Any],
    figures: Sequence[str] = (),
    mistakes: Sequence[Mapping[str, Any]] = (),
) -> str:
    """``report.md``: the report of :func:`evaluate_checkpoint` as a table.

    Every text that comes from the data (paths, file names, class names, a table's sources and
    subgroups) goes through :func:`md_text` or :func:`md_code`: it shows as text, never as
    markup (issue 28).

    The columns at 0.5 are left out where the threshold is 0.5: they would repeat the first.

    Args:
        figures: the PNGs written beside it, shown after the table (``roc.png`` ...).
        mistakes: the most confident mistakes, worst first: ``file``, ``label``,
            ``probability`` and ``gradcam`` (its Grad-CAM PNG, relative to the report).
    """
    conf = f"{result['bootstrap']['confidence']:.0%}"
    t = result["threshold"]
    at_half = result["metrics_at_0.5"] if t != 0.5 else None
    head = f"| metric | at threshold {t:.3f} | {conf} CI |"
    lines = [
        f"# Evaluation of {md_code(result['checkpoint'])}",
        "",
        f"Split **{md_text(result['split'])}** of {md_code(result['data_root'])}: "
        f"{result['num_images']} images, "
        f"{result['num_pneumonia']} PNEUMONIA. Test-time augmentation: "
        f"{'small rotations averaged' if result['tta'] else 'none'}.",
        f"Intervals: {conf} percentile bootstrap, {result['bootstrap']['resamples']} resamples.",
        Decision(**result["decision"]).describe(result.get("prior_shift")),
        "",
        head + (f" at 0.5 | {conf} CI |" if at_half else ""),
        "|---|---|---|" + ("---|---|" if at_half else ""),
    ]
    one = result.get("one_class")
    if one:
        lines[6:6] = [*_one_class_lines(one, result["num_images"]), ""]
    for name, label in (METRIC_LABELS | COMPLEMENT_LABELS if one else METRIC_LABELS).items():
        if name not in result["metrics"]:
            continue  # the complement of the rate the other class would give
        row = f"| {label} | {_cells(result['metrics'][name])} |"
        if at_half is not None:
            row += f" {_cells(at_half[name])} |" if name in at_half else " (threshold-free) | |"
        lines.append(row)
    (tn, fp), (fn, tp) = result["confusion_matrix"]
    lines += ["", f"Confusion matrix at {t:.3f}: TN {tn}, FP {fp}, FN {fn}, TP {tp}.", ""]
    if figures:
        lines += [" ".join(f"![{md_text(Path(f).stem.replace('_', ' '))}]({md_url(f)})"
                           for f in figures), ""]  # fmt: skip
    lines += _operating_lines(None if one else result.get("operating_points"), conf)
    lines += _calibration_lines(result.get("calibration"))
    lines += _shift_lines(result.get("shift"), conf)
    lines += _source_lines(result.get("by_source"), conf)
    lines += _subgroup_lines(result.get("subgroups"), conf)
    lines += _mistake_lines(mistakes, t)
    if one:  # the figures one class allows
        lines += ["Files: " + ", ".join(f"`{f}`" for f in [*figures, "predictions.csv"]) + ".",
                  ""]  # fmt: skip
    else:
        lines += ["Files: `confusion_matrix.png`, `roc.png`, `pr.png`, `reliability.png`, "
                  "`predictions.csv`.", ""]  # fmt: skip
    return "\n".join(lines)


# A set of one class: its rate's complement, by the rate (decision.report.ONE_CLASS_RATES).
COMPLEMENT_LABELS = {
    "false_positive_rate": "False-positive rate (1 - specificity)",
    "false_negative_rate": "False-negative rate (1 - sensitivity)",
}


def _one_class_lines(one: Mapping[str, Any], images: int) -> list[str]:
    """report.md's plain statement for a set of one class: what it tells, what it cannot."""
    name = md_text(one.get("class") or ("PNEUMONIA" if one["positive"] else "NORMAL"))
    rate, miss = (
        ("sensitivity", "false-negative") if one["positive"] else ("specificity", "false-positive")
    )
    return [f"**Every image is {name}** ({images} images): these images tell the {rate} (the "
            f"share of them called {name}) and the {miss} rate, with "
            "the counts and the calibration one class defines. AUROC, the ROC and PR curves, "
            "precision (PPV), NPV, F1, the operating points, the calibration slope and "
            "intercept, and a threshold chosen on these images need both classes: they are not "
            "computed."]  # fmt: skip


def _operating_lines(points: dict[str, Any] | None, conf: str) -> list[str]:
    """report.md's operating points: sensitivity at fixed specificities and the reverse, and
    PPV/NPV at a stated prevalence."""
    if not points:
        return []
    lines = ["## Operating points", "",
             f"| operating point | value | {conf} CI | threshold on these images |",
             "|---|---|---|---|"]  # fmt: skip
    for p in points["points"]:
        level = level_name(p)  # as decision.metrics names the operating points
        for name, label in ((f"sensitivity_at_specificity_{level}", f"Sensitivity at specificity "
                             f">= {p:.0%}"), (f"specificity_at_sensitivity_{level}",
                             f"Specificity at sensitivity >= {p:.0%}")):  # fmt: skip
            m = points.get(name)
            threshold = f"{m['threshold']:.3f}" if m else "-"
            lines.append(f"| {label} | {_cells(m)} | {threshold} |")
    at = points.get("at_prevalence")
    if at:
        lines += ["", f"At a PNEUMONIA prevalence of {at['prevalence']:.1%} (stated, not these "
                  f"images'), at the stored threshold {at['threshold']:.3f}: PPV "
                  f"{_inline(at['ppv'])}, NPV {_inline(at['npv'])} ({conf} CI)."]  # fmt: skip
    return [*lines, ""]


def _calibration_lines(calibration: dict[str, Any] | None) -> list[str]:
    """report.md's calibration: before and after the stored temperature."""
    if not calibration:
        return []
    before, after = calibration["before_temperature"], calibration["after_temperature"]
    rows = CALIBRATION_ROWS
    lines = ["## Calibration", "",
             f"Probabilities at the decision's prevalence ({calibration['prevalence']:.0%}); ECE "
             f"over {calibration['binning']}, and the Brier score's decomposition (Murphy 1973) "
             "over the same bins. `reliability.png` draws both curves with the bins' counts.", "",
             f"| | without temperature | with the stored temperature "
             f"{after['temperature']:.3f} |", "|---|---|---|"]  # fmt: skip
    if "mean_probability" in after:  # one class: the mean probability against its share
        rows = (("Mean probability of PNEUMONIA", "mean_probability"),
                ("Observed share of PNEUMONIA", "observed_rate"), *rows)  # fmt: skip
    for label, key in rows:
        if before[key] is not None:  # None: the calibration line, which one class cannot fit
            lines.append(f"| {label} | {before[key]:.4f} | {after[key]:.4f} |")
    return [*lines, ""]


def _inline(m: dict[str, float] | None) -> str:
    if m is None or m["value"] != m["value"]:  # undefined, or NaN
        return "-"
    return f"{m['value']:.3f} ({m['ci_low']:.3f} - {m['ci_high']:.3f})"


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
        lines.append(f"| {md_text(name)} | {group['num_images']} | {group['num_pneumonia']} | "
                     f"{cells} |")  # fmt: skip
    return [*lines, ""]


GROUPINGS = {
    "pathogen": "Bacterial and viral pneumonia (Kermany's file names; PNEUMONIA images only, so "
    "recall alone)",
    "sex": "By sex",
    "age_band": "By age band (years)",
    "view": "By view",
}


def _subgroup_lines(subgroups: dict[str, Any] | None, conf: str) -> list[str]:
    """report.md's subgroups: a table per grouping, a warning for a group too small."""
    if not subgroups:
        return []
    lines = ["## Subgroups", ""]
    for grouping, groups in subgroups.items():
        head = (f"| group | images | PNEUMONIA | AUROC | {conf} CI | sensitivity | {conf} CI "
                f"| specificity | {conf} CI |")  # fmt: skip
        lines += [f"**{GROUPINGS.get(grouping) or md_text(grouping)}**", "", head,
                  "|---" * 9 + "|"]  # fmt: skip
        for name, g in groups.items():
            if "warning" in g:
                cells = f"{g['warning']} | | | | | |"
            else:
                cells = " | ".join(_cells(g["metrics"].get(k))
                                   for k in ("auroc", "recall", "specificity"))  # fmt: skip
            lines.append(f"| {md_text(name)} | {g['num_images']} | {g['num_pneumonia']} | "
                         f"{cells} |")  # fmt: skip
        lines.append("")
    return lines


def _mistake_lines(mistakes: Sequence[Mapping[str, Any]], threshold: float) -> list[str]:
    """report.md's most confident mistakes, with their Grad-CAM for PNEUMONIA."""
    if not mistakes:
        return []
    lines = ["## Most confident mistakes", "",
             f"The wrong calls farthest from the threshold ({threshold:.3f}), worst first, each "
             "with its Grad-CAM for PNEUMONIA on the original image (the region the model looked "
             "at coloured, the rest dimmed).", "",
             "| image | true class | P(PNEUMONIA) | Grad-CAM |", "|---|---|---|---|"]  # fmt: skip
    for m in mistakes:
        name = Path(m["file"]).name
        picture = f"![{md_text(name)}]({md_url(m['gradcam'])})" if m.get("gradcam") else "-"
        lines.append(f"| {md_code(name)} | {md_text(m['label'])} | {m['probability']:.3f} | "
                     f"{picture} |")  # fmt: skip
    return [*lines, ""]


def _cells(m: dict[str, float] | None) -> str:
    """A metric's value and interval, or a dash where the images do not define it."""
    if m is None:
        return "- | -"
    return f"{m['value']:.3f} | {m['ci_low']:.3f} - {m['ci_high']:.3f}"
