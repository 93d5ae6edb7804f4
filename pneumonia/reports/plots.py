"""Figures for TensorBoard, run directories and notebooks.

mlxtend draws its labels through pyplot's *current* axes, so the confusion matrix is made with
pyplot; callers close it (TensorBoard's ``add_figure`` does, ``save_figure`` does).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from matplotlib import pyplot as plt
from matplotlib.figure import Figure
from mlxtend.plotting import plot_confusion_matrix
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_average_precision,
    binary_precision_recall_curve,
    binary_roc,
)

from pneumonia.system.files import atomic_path


def confusion_matrix_figure(
    matrix: torch.Tensor | np.ndarray, class_names: Sequence[str], title: str = ""
) -> Figure:
    """mlxtend's confusion matrix with counts and row-normalised rates; counts alone where a
    class has no image (a set of one class), whose row's rates would be 0/0, drawn as nan."""
    counts = np.asarray(matrix, dtype=np.int64)
    fig, ax = plt.subplots(figsize=(4.2, 4.2), layout="constrained")
    with np.errstate(invalid="ignore"):  # mlxtend divides by every row's count, drawn or not
        plot_confusion_matrix(
            conf_mat=counts,
            class_names=list(class_names),
            show_absolute=True,
            show_normed=bool(counts.sum(axis=1).all()),
            colorbar=False,
            figure=fig,
            axis=ax,
        )
    ax.set_title(title, fontsize=10)
    return fig


def roc_figure(probs: torch.Tensor, targets: torch.Tensor, title: str = "") -> Figure:
    """ROC curve of PNEUMONIA probabilities against binary targets, with its AUROC."""
    return _roc_curves([(probs, "")], targets, title, size=4.2, diagonal="--")


def roc_pair_figure(
    probs: Sequence[torch.Tensor],
    targets: torch.Tensor,
    labels: Sequence[str] = ("A", "B"),
    title: str = "",
) -> Figure:
    """Models' ROC curves on the same images, each with its AUROC; every curve after the
    first dashed, so that curves on top of each other all show."""
    curves = [(p, f"{label}: ") for p, label in zip(probs, labels, strict=True)]
    return _roc_curves(curves, targets, title, size=4.8, diagonal=":")


def _roc_curves(
    curves: Sequence[tuple[torch.Tensor, str]],
    targets: torch.Tensor,
    title: str,
    *,
    size: float,
    diagonal: str,
) -> Figure:
    fig = Figure(figsize=(size, size), layout="constrained")
    ax = fig.add_subplot()
    for i, (p, prefix) in enumerate(curves):
        fpr, tpr, _ = binary_roc(p.float(), targets.long())
        auroc = binary_auroc(p.float(), targets.long()).item()
        ax.plot(fpr.numpy(), tpr.numpy(), lw=2, ls="--" if i else "-",
                label=f"{prefix}AUROC = {auroc:.3f}")  # fmt: skip
    ax.plot([0, 1], [0, 1], ls=diagonal, c="grey", lw=1)
    ax.set(xlabel="1 - specificity (FPR)", ylabel="sensitivity (TPR)", xlim=(0, 1), ylim=(0, 1.01))
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right")
    return fig


def reliability_figure(
    curve: dict, title: str = "", before: dict | None = None, label: str = ""
) -> Figure:
    """A calibration curve (``calibration.reliability``): observed share of PNEUMONIA against
    the mean probability per bin, the diagonal, and each bin's count below; ``before``, a
    second curve (the probabilities without the temperature), drawn lighter with its counts."""
    fig = Figure(figsize=(4.2, 5.0), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    width = curve["bins"][0]["high"] - curve["bins"][0]["low"]
    drawn = [(before, "without temperature", "tab:orange", 0.45)] if before else []
    for c, name, colour, alpha in [*drawn, (curve, label, "tab:blue", 1.0)]:
        full = [b for b in c["bins"] if b["count"]]
        top.plot([b["mean_probability"] for b in full], [b["observed"] for b in full], "o-",
                 lw=2, c=colour, alpha=alpha, label=f"{name + ': ' if name else ''}"
                 f"ECE = {c['ece']:.3f}")  # fmt: skip
        shift = -width / 4 if c is before else (width / 4 if before else 0)
        bottom.bar([(b["low"] + b["high"]) / 2 + shift for b in c["bins"]],
                   [b["count"] for b in c["bins"]], width=width / (2 if before else 1),
                   color=colour, alpha=alpha, edgecolor="white")  # fmt: skip
    top.set(ylabel="observed share PNEUMONIA", xlim=(0, 1), ylim=(0, 1.01))
    top.set_title(title, fontsize=10)
    top.legend(loc="upper left", fontsize=8, title=curve.get("binning", ""),
               title_fontsize=7)  # fmt: skip
    bottom.set(xlabel="PNEUMONIA probability", ylabel="images")
    return fig


def pr_figure(probs: torch.Tensor, targets: torch.Tensor, title: str = "") -> Figure:
    """Precision-recall curve with average precision and the prevalence baseline."""
    precision, recall, _ = binary_precision_recall_curve(probs.float(), targets.long())
    ap = binary_average_precision(probs.float(), targets.long()).item()
    fig = Figure(figsize=(4.2, 4.2), layout="constrained")
    ax = fig.add_subplot()
    ax.step(recall.numpy(), precision.numpy(), where="post", lw=2, label=f"AP = {ap:.3f}")
    prevalence = targets.float().mean().item()
    ax.axhline(prevalence, ls="--", c="grey", lw=1, label=f"prevalence {prevalence:.2f}")
    ax.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", xlim=(0, 1), ylim=(0, 1.01))
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower left")
    return fig


def image_grid(
    images: Sequence[np.ndarray], captions: Sequence[str], *, columns: int = 4
) -> Figure:
    """Images (gray or RGB arrays) with captions, e.g. the most confident mistakes."""
    rows = max(1, -(-len(images) // columns))
    fig = Figure(figsize=(3 * columns, 3.2 * rows), layout="constrained")
    for i in range(rows * columns):
        ax = fig.add_subplot(rows, columns, i + 1)
        ax.axis("off")
        if i < len(images):
            ax.imshow(images[i], cmap="gray" if images[i].ndim == 2 else None)
            ax.set_title(captions[i], fontsize=8)
    return fig


def evaluation_figures(
    probs: torch.Tensor,
    targets: torch.Tensor,
    threshold: float,
    class_names: Sequence[str],
    title: str,
    *,
    pr: bool = False,
) -> dict[str, Figure]:
    """The confusion matrix at ``threshold``, plus ROC (and PR) when both classes occur.

    Keys are ``confusion_matrix``, ``roc``, ``pr``: TensorBoard tags and PNG names alike.
    """
    from pneumonia.decision.metrics import confusion_matrix

    cm = confusion_matrix(probs, targets, threshold)
    figures = {
        "confusion_matrix": confusion_matrix_figure(
            cm, class_names, f"{title}, threshold {threshold:.3f}"
        )
    }
    if len(targets) and targets.min() != targets.max():  # curves need both classes
        figures["roc"] = roc_figure(probs, targets, title)
        if pr:
            figures["pr"] = pr_figure(probs, targets, title)
    return figures


def save_figure(fig: Figure, path) -> None:
    """Write a PNG and release the figure (pyplot keeps figures alive until closed)."""
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=120, format="png")
    finally:
        plt.close(fig)
