"""A checkpoint on a set of labelled images, and the report on it, with honest error bars.

The library under ``pneumonia-evaluate``, the API's ``Classifier.evaluate`` and the notebook:
scoring any labelled folder or one of the training run's splits (:func:`score`), the report
with percentile-bootstrap intervals (:func:`report`; on Kermany's 624 test images accuracy
alone moves by about +-3 points between resamples, which a single number hides), its markdown,
and the most confident mistakes.
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
from pneumonia.data.cache import default_cache_dir
from pneumonia.data.dataset import labelled_folder_loader
from pneumonia.data.index import evaluation_folder
from pneumonia.decision import Decision, adapt_to_prevalence
from pneumonia.errors import InputValueError
from pneumonia.inference import predict_batches
from pneumonia.metrics import (
    BOOTSTRAP_RESAMPLES,
    CONFIDENCE,
    bootstrap_interval,
    confusion_matrix,
    ranking_metrics,
    thresholded_metrics,
)
from pneumonia.predictions import Predictions

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
            cache_dir=_cache_dir(args),
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
    probs = predict_batches(ckpt, loader, device=device, precision=precision, tta=tta)
    targets = (torch.tensor(labels) == ckpt.positive_index).long()
    return Predictions(probs, targets, ckpt.threshold, files=files)


def _cache_dir(args: Mapping[str, Any]) -> Path | None:
    if not args.get("cache", True):
        return None
    return Path(args["cache_dir"]).expanduser() if args.get("cache_dir") else default_cache_dir()


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
    preds.probs, shift = adapt_to_prevalence(preds.probs, ckpt.decision, prior_shift)
    result = report(preds, resamples=resamples, confidence=confidence, seed=seed)
    root = (data or {}).get("root") or ckpt.data_args.get("root")
    result |= {
        "decision": ckpt.decision.to_dict(),
        "prior_shift": shift,
        "checkpoint": str(ckpt.path),
        "split": split,
        "data_root": str(root),
        "tta": bool(tta),
    }
    return result, preds


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
    lines += [
        "",
        f"Confusion matrix at {t:.3f}: TN {tn}, FP {fp}, FN {fn}, TP {tp}.",
        "",
        "Files: `confusion_matrix.png`, `roc.png`, `pr.png`, `predictions.csv`.",
        "",
    ]
    return "\n".join(lines)


def confident_mistakes(preds: Predictions, k: int = 8) -> list[int]:
    """Indices of the ``k`` wrong predictions farthest from the threshold, worst first."""
    predicted = (preds.probs > preds.threshold).long()
    wrong = torch.nonzero(predicted != preds.targets).flatten()
    margin = (preds.probs[wrong] - preds.threshold).abs()
    return wrong[torch.argsort(margin, descending=True)][:k].tolist()
