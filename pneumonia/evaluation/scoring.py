"""Scoring labelled images: any labelled folder, or one of the training run's splits."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from pneumonia.data import ChestXRayDataModule
from pneumonia.data.cache import cache_folder
from pneumonia.data.dataset import labelled_loader
from pneumonia.data.index import evaluation_folder, labelled_folder
from pneumonia.data.readers import FOLDERS, evaluation_listing
from pneumonia.decision.metrics import BOOTSTRAP_RESAMPLES, CONFIDENCE
from pneumonia.decision.predictions import Predictions
from pneumonia.decision.prior_shift import flag_and_rebase
from pneumonia.decision.report import (
    NEEDS_BOTH_CLASSES,
    by_source,
    calibration_report,
    metrics_report,
    operating_points,
    shift_report,
)
from pneumonia.decision.subgroups import MIN_SUBGROUP, subgroup_report
from pneumonia.errors import InputValueError
from pneumonia.inference.runner import predict_batches
from pneumonia.models.checkpoint import LoadedCheckpoint

log = logging.getLogger(__name__)

SPLITS = ("test", "val", "train", "holdout")
# Images per batch when evaluating (evaluate.yaml's batch_size mirrors it; a test holds them
# equal).
EVALUATE_BATCH_SIZE = 64
# The DataModule arguments evaluation takes over the training run's (evaluate.yaml's data:);
# data=nih and the like bring a whole data config, of which only these count.
EVALUATE_DATA_KEYS = ("root", "cache_dir", "cache", "num_workers", "on_bad_image", "holdout_root",
                      "table")  # fmt: skip


def evaluation_data(cfg: Mapping[str, Any]) -> dict[str, Any] | None:
    """The keys of ``cfg.data`` evaluation takes (a whole data config, from ``data=nih``,
    brings training keys too, which the checkpoint decides)."""
    if not cfg.get("data"):
        return None
    data = {k: cfg.data[k] for k in EVALUATE_DATA_KEYS if k in cfg.data}
    return {
        k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
        for k, v in data.items()
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
    layout), else ``data.root/<CLASS>/`` itself; or, with ``data.table``, a table's test rows
    (every row where it has none: a collection used whole for external validation). No
    training folder is needed, and only these images are decoded and cached. ``val``,
    ``train`` and ``holdout`` are the training run's splits, rebuilt from its data.

    Args:
        precision: a resolved precision (``inference.inference_precision``).
        data: DataModule arguments over the training run's own (``root``, ``cache``,
            ``cache_dir``, ``on_bad_image``, ``num_workers``, ``holdout_root`` ...); None values
            keep the run's. The preprocessing is always the checkpoint's.
    """
    if split not in SPLITS:
        raise InputValueError(f"split={split!r}: use {', '.join(SPLITS)}")
    args = {**ckpt.data_args, **{k: v for k, v in (data or {}).items() if v is not None}}
    if (args.get("table") or {}).get("reader") == FOLDERS:
        args["table"] = None  # the folder layout, whatever the run read
    if not args.get("root"):
        raise InputValueError(
            f"{ckpt.path} does not record the data folder it was trained on: pass the folder "
            "to evaluate with data.root=..."
        )
    if split == "test":
        root = Path(args["root"]).expanduser()
        if args.get("table"):
            listing = evaluation_listing(root, args["table"], ckpt.class_names)
        else:
            listing = labelled_folder(evaluation_folder(root), ckpt.class_names)
        listing, loader = labelled_loader(
            listing,
            ckpt.preprocessing,
            where=root,
            cache_dir=cache_folder(args.get("cache", True), args.get("cache_dir")),
            on_bad_image=args.get("on_bad_image") or "error",
            batch_size=batch_size,
            num_workers=args.get("num_workers") or 0,
            warn=lambda m: log.warning("%s", m),
            tta=tta,
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
        listing = datamodule.listing(split)
        loader = datamodule.eval_dataloader(split, tta=tta)
    probs, shift = predict_batches(ckpt, loader, device=device, precision=precision)
    targets = (torch.tensor(listing.labels) == ckpt.positive_index).long()
    return Predictions(
        probs,
        targets,
        ckpt.threshold,
        files=listing.files,
        attributes=listing.attribute_rows(),
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
    prevalence: float | None = None,
    min_subgroup: int = MIN_SUBGROUP,
) -> tuple[dict[str, Any], Predictions]:
    """:func:`score`, the prior shift, and the :func:`report` with what it was made from:
    also the calibration (before and after the stored temperature) and the operating points,
    with PPV and NPV at ``prevalence`` (a clinic's PNEUMONIA prevalence) when one is given, and
    the subgroups (bacterial and viral pneumonia, sex, age band, view) of ``min_subgroup``
    images or more. A set of one class is reported for what it defines (``one_class``).

    Returns:
        The report (``report.json``) and the predictions behind it (``predictions.csv``).
    """
    preds = score(
        ckpt, split, device=device, precision=precision, tta=tta, batch_size=batch_size, data=data
    )
    bootstrap = {"resamples": resamples, "confidence": confidence, "seed": seed}
    unlike = shift_report(preds, ckpt.shift, **bootstrap) if ckpt.shift is not None else None
    calibration = calibration_report(preds, ckpt.decision)  # before any prior shift
    preds.probs, shift = flag_and_rebase(
        preds.probs, preds.shift, ckpt.shift, ckpt.decision, prior_shift, ckpt.class_probabilities
    )
    result = metrics_report(preds, **bootstrap)
    if "one_class" in result:
        _say_one_class(result, ckpt, split)
        for group in ("in_distribution", "flagged"):  # of one class too: what needs both, None
            if unlike and unlike[group]:
                unlike[group] |= dict.fromkeys(NEEDS_BOTH_CLASSES)
    result["calibration"] = calibration
    result["operating_points"] = operating_points(preds, prevalence, **bootstrap)
    result["by_source"] = by_source(preds, **bootstrap)
    result["subgroups"] = subgroup_report(preds, min_size=min_subgroup, **bootstrap)
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


def _say_one_class(result: dict[str, Any], ckpt: LoadedCheckpoint, split: str) -> None:
    """Name the one class in ``result["one_class"]`` and say in the log what the report holds."""
    section = result["one_class"]
    index = ckpt.positive_index if section["positive"] else 1 - ckpt.positive_index
    section = result["one_class"] = {"class": ckpt.class_names[index], **section}
    rate = "sensitivity" if section["positive"] else "specificity"
    log.warning(
        "Every image of split %s is %s (%d images): the report gives the %s (and its "
        "complement), the counts and the calibration one class defines. AUROC, the ROC and PR "
        "curves, precision (PPV), NPV, F1, the operating points and a threshold chosen on "
        "these images need both classes and are not computed.",
        split, section["class"], result["num_images"], rate,
    )  # fmt: skip
