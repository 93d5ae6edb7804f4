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


def confusion_matrix_figure(
    matrix: torch.Tensor | np.ndarray, class_names: Sequence[str], title: str = ""
) -> Figure:
    """mlxtend's confusion matrix with counts and row-normalised rates."""
    fig, ax = plt.subplots(figsize=(4.2, 4.2), layout="constrained")
    plot_confusion_matrix(
        conf_mat=np.asarray(matrix, dtype=np.int64),
        class_names=list(class_names),
        show_absolute=True,
        show_normed=True,
        colorbar=False,
        figure=fig,
        axis=ax,
    )
    ax.set_title(title, fontsize=10)
    return fig


def roc_figure(fpr: torch.Tensor, tpr: torch.Tensor, auroc: float, title: str = "") -> Figure:
    fig = Figure(figsize=(4.2, 4.2), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(np.asarray(fpr), np.asarray(tpr), lw=2, label=f"AUROC = {auroc:.3f}")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    ax.set(xlabel="1 - specificity (FPR)", ylabel="sensitivity (TPR)", xlim=(0, 1), ylim=(0, 1.01))
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right")
    return fig


def save_figure(fig: Figure, path) -> None:
    """Write a PNG and release the figure (pyplot keeps figures alive until closed)."""
    fig.savefig(path, dpi=120)
    plt.close(fig)
