"""A checkpoint on a set of labelled images, and the report on it, with honest error bars.

The library under ``pneumonia-evaluate``, the API's ``Classifier.evaluate`` and the notebook:
scoring any labelled folder or one of the training run's splits (:func:`score`), the report
with percentile-bootstrap intervals (:func:`report`; on Kermany's 624 test images accuracy
alone moves by about +-3 points between resamples, which a single number hides), the share of
images unlike the training images, and the markdown (the most confident mistakes are
``Predictions.confident_mistakes``).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from pneumonia.checkpoint import LoadedCheckpoint
from pneumonia.data import ChestXRayDataModule
from pneumonia.data.cache import cache_folder
from pneumonia.data.dataset import labelled_folder_loader
from pneumonia.data.index import evaluation_folder
from pneumonia.decision import Decision
from pneumonia.errors import InputValueError
from pneumonia.inference import WARN_SHARE, predict_batches, warn_if_unlike_training
from pneumonia.metrics import (
    BOOTSTRAP_RESAMPLES,
    CONFIDENCE,
    bootstrap_interval,
    confusion_matrix,
    ranking_metrics,
    thresholded_metrics,
)
from pneumonia.predictions import Predictions
from pneumonia.prior_shift import adapt_to_prevalence
from pneumonia.shift import ShiftReference

log = logging.getLogger(__name__)

SPLITS = ("test", "val", "train", "holdout")
# Images per batch when evaluating (evaluate.yaml's batch_size mirrors it; a test holds them
# equal).
EVALUATE_BATCH_SIZE = 64
METRIC_LABELS = {
    "accuracy": "Accuracy",
    "precision": "Precision (PPV)",
    "recall": "Recall (sensitivity)",
    "specificity": "Specificity",
    "f1": "F1",
    "auroc": "AUROC",
    "average_precision": "Average precision",
}


def score(
    ckpt: LoadedCheckpoint,
    split: str = "test",
    *,
    device: torch.device,
    precision: str,
    tta: bool = False,
    batch_size: int = EVALUATE_BATCH_SIZE,
    data: Mapping[str, Any] | None = None,
) -> Predictions:
    """The checkpoint's probabilities on labelled images (eval transforms only).

    ``test`` is any labelled folder: ``data.root/test/<CLASS>/`` when there is one (the Kaggle
    layout), else ``data.root/<CLASS>/`` itself; no training folder is needed, and only these
    images are decoded and cached. ``val``, ``train`` and ``holdout`` are the training run's
    splits, rebuilt from its data folder.

    Args:
        precision: a resolved precision (``inference.inference_precision``).
        data: DataModule arguments over the training run's own (``root``, ``cache``,
            ``cache_dir``, ``on_bad_image``, ``num_workers``, ``holdout_root`` ...); None values
            keep the run's. The preprocessing is always the checkpoint's.
    """
    if split not in SPLITS:
        raise InputValueError(f"split={split!r}: use {', '.join(SPLITS)}")
    args = {**ckpt.data_args, **{k: v for k, v in (data or {}).items() if v is not None}}
    if not args.get("root"):
        raise InputValueError(
            f"{ckpt.path} does not record the data folder it was trained on: pass the folder "
            "to evaluate with data.root=..."
        )
    if split == "test":
        folder = evaluation_folder(Path(args["root"]).expanduser())
        files, labels, loader = labelled_folder_loader(
            folder,
            ckpt.class_names,
            ckpt.preprocessing,
            cache_dir=cache_folder(args.get("cache", True), args.get("cache_dir")),
            on_bad_image=args.get("on_bad_image") or "error",
            batch_size=batch_size,
            num_workers=args.get("num_workers") or 0,
            warn=lambda m: log.warning("%s", m),
        )
    else:
        if split == "holdout" and not args.get("holdout_root"):
            raise InputValueError(
                "split=holdout needs a holdout folder: the checkpoint's run had none, so pass "
                "data.holdout_root=..."
            )
        datamodule = ChestXRayDataModule(
            **{**args, "eval_batch_size": batch_size}, **ckpt.preprocessing.to_dict()
        )
        datamodule.setup("fit")
        files, labels = datamodule.files(split), datamodule.labels(split)
        loader = datamodule.eval_dataloader(split)
    probs, shift = predict_batches(ckpt, loader, device=device, precision=precision, tta=tta)
    targets = (torch.tensor(labels) == ckpt.positive_index).long()
    return Predictions(
        probs,
        targets,
        ckpt.threshold,
        files=files,
        shift=shift,
        shift_threshold=ckpt.shift.threshold if ckpt.shift else None,
    )


def evaluate_checkpoint(
    ckpt: LoadedCheckpoint,
    split: str = "test",
    *,
    device: torch.device,
    precision: str,
    tta: bool = False,
    prior_shift: str = "none",
    batch_size: int = EVALUATE_BATCH_SIZE,
    data: Mapping[str, Any] | None = None,
    resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> tuple[dict[str, Any], Predictions]:
    """:func:`score`, the prior shift, and the :func:`report` with what it was made from.

    Returns:
        The report (``report.json``) and the predictions behind it (``predictions.csv``).
    """
    preds = score(
        ckpt, split, device=device, precision=precision, tta=tta, batch_size=batch_size, data=data
    )
    bootstrap = {"resamples": resamples, "confidence": confidence, "seed": seed}
    unlike = None
    if ckpt.shift is not None:
        unlike = shift_report(preds, ckpt.shift, **bootstrap)
        warn_if_unlike_training(unlike["num_flagged"], len(preds.probs), ckpt.shift)
    preds.probs, shift = adapt_to_prevalence(
        preds.probs,
        ckpt.decision,
        prior_shift,
        flagged_share=unlike["share_flagged"] if unlike else None,
    )
    result = report(preds, **bootstrap)
    root = (data or {}).get("root") or ckpt.data_args.get("root")
    result |= {
        "shift": unlike,
        "decision": ckpt.decision.to_dict(),
        "prior_shift": shift,
        "checkpoint": str(ckpt.path),
        "split": split,
        "data_root": str(root),
        "tta": bool(tta),
    }
    return result, preds


def shift_report(preds: Predictions, reference: ShiftReference, **bootstrap: Any) -> dict:
    """How many images are unlike the training images, and the metrics of each group, with
    intervals (a group with one class only has no AUROC; an empty one, no metrics)."""
    inside = preds.in_distribution
    flagged = int((~inside).sum())
    groups = {"in_distribution": preds.subset(inside), "flagged": preds.subset(~inside)}
    return {
        **reference.describe(),
        "num_flagged": flagged,
        "share_flagged": flagged / len(inside) if len(inside) else 0.0,
        **{
            name: report(group, **bootstrap)["metrics"] if len(group.probs) else None
            for name, group in groups.items()
        },
    }


def report(
    preds: Predictions,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> dict[str, Any]:
    """Metrics at the predictions' threshold and at 0.5, each with a percentile bootstrap
    interval.

    Every interval is drawn from the same resamples of the images (each metric's bootstrap
    starts from ``seed``), so the report is the same for the same predictions, and a metric
    at a threshold of 0.5 gets one interval in both sections.
    """
    probs, targets = preds.probs.float(), preds.targets.long()
    out: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # resamples without a class warn per metric
        for key, threshold in (("metrics", preds.threshold), ("metrics_at_0.5", 0.5)):
            collection = thresholded_metrics(threshold)
            if key == "metrics":
                collection.add_metrics(dict(ranking_metrics().items()))
            section = {}
            for name, metric in collection.items():
                value = metric.clone()(probs, targets).item()
                with torch.random.fork_rng():
                    torch.manual_seed(seed)
                    low, high = bootstrap_interval(
                        metric.clone(), probs, targets, resamples, confidence
                    )
                section[name] = {"value": value, "ci_low": low, "ci_high": high}
            out[key] = section
    out["confusion_matrix"] = confusion_matrix(probs, targets, preds.threshold).tolist()
    out["confusion_matrix_at_0.5"] = confusion_matrix(probs, targets, 0.5).tolist()
    out["num_images"] = len(targets)
    out["num_pneumonia"] = int(targets.sum())
    out["threshold"] = preds.threshold
    out["bootstrap"] = {"resamples": resamples, "confidence": confidence, "seed": seed}
    return out


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
        m = result["metrics"][name]
        row = f"| {label} | {m['value']:.3f} | {m['ci_low']:.3f} - {m['ci_high']:.3f} |"
        if at_half is not None:
            h = at_half.get(name)
            if h:
                row += f" {h['value']:.3f} | {h['ci_low']:.3f} - {h['ci_high']:.3f} |"
            else:
                row += " (threshold-free) | |"
        lines.append(row)
    (tn, fp), (fn, tp) = result["confusion_matrix"]
    lines += ["", f"Confusion matrix at {t:.3f}: TN {tn}, FP {fp}, FN {fn}, TP {tp}.", ""]
    lines += _shift_lines(result.get("shift"), conf)
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
        cells = []
        for group in ("in_distribution", "flagged"):
            m = (shift[group] or {}).get(name)
            cells.append(f"{m['value']:.3f} | {m['ci_low']:.3f} - {m['ci_high']:.3f}" if m
                         else "- | -")  # fmt: skip
        lines.append(f"| {label} | {cells[0]} | {cells[1]} |")
    return [*lines, ""]
