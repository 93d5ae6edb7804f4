"""``python -m pneumonia.evaluate ckpt_path=...``: a checkpoint on a split, with honest error bars.

Every metric comes with a percentile-bootstrap confidence interval (torchmetrics'
BootStrapper): on Kermany's 624 test images accuracy alone moves by about +-3 points between
resamples, which a single number hides.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from pneumonia.checkpoint import LoadedCheckpoint, load_checkpoint
from pneumonia.config import CONFIG_DIR, EVALUATE_RULES, check_values
from pneumonia.data import ChestXRayDataModule
from pneumonia.data.cache import default_cache_dir
from pneumonia.data.dataset import labelled_folder_loader
from pneumonia.files import write_text
from pneumonia.inference import adapt_to_prevalence, predict_batches, write_predictions
from pneumonia.metrics import (
    bootstrap_interval,
    confusion_matrix,
    ranking_metrics,
    thresholded_metrics,
)
from pneumonia.runtime import resolve_device

log = logging.getLogger(__name__)

METRIC_LABELS = {
    "accuracy": "Accuracy",
    "precision": "Precision (PPV)",
    "recall": "Recall (sensitivity)",
    "specificity": "Specificity",
    "f1": "F1",
    "auroc": "AUROC",
    "average_precision": "Average precision",
}


@dataclass
class Predictions:
    """Per-image results of a checkpoint on one split."""

    files: list[Path]
    targets: torch.Tensor  # 1 = PNEUMONIA (the positive class), 0 = NORMAL
    probs: torch.Tensor  # PNEUMONIA probability

    def write_csv(self, path: Path, threshold: float, class_names: list[str], positive: int):
        """``predictions.csv`` in the layout of ``inference.PREDICTION_COLUMNS``."""
        negative = 1 - positive
        write_predictions(
            path,
            (
                {
                    "file": str(file),
                    "label": class_names[positive if target else negative],
                    "probability": float(prob),
                    "prediction": class_names[positive if prob > threshold else negative],
                    "threshold": threshold,
                }
                for file, target, prob in zip(self.files, self.targets, self.probs, strict=True)
            ),
        )


def predict_split(
    ckpt: LoadedCheckpoint,
    split: str = "test",
    *,
    data_overrides: dict[str, Any] | None = None,
    tta: bool = False,
    accelerator: str = "auto",
    precision: str | int = "auto",
) -> Predictions:
    """Run a checkpoint over a labelled split (eval transforms only).

    ``test`` is any labelled folder: ``data.root/test/<CLASS>/`` when there is one (the Kaggle
    layout), else ``data.root/<CLASS>/`` itself; no training folder is needed, and only these
    images are decoded and cached. ``val``, ``train`` and ``holdout`` are the training run's
    splits, rebuilt from its data folder.
    """
    if split not in ("train", "val", "test", "holdout"):
        raise ValueError(f"split={split!r}: use test, val, train or holdout")
    args = {
        **ckpt.data_hparams,
        **{k: v for k, v in (data_overrides or {}).items() if v is not None},
        **ckpt.preprocessing.to_dict(),  # always the checkpoint's own, whatever the overrides
    }
    if not args.get("root"):
        raise ValueError(
            f"{ckpt.path} does not record the data folder it was trained on: pass the folder "
            "to evaluate with data.root=..."
        )
    if split == "test":
        files, labels, loader = _labelled_folder_loader(ckpt, args)
    else:
        files, labels, loader = _training_split_loader(ckpt, args, split)
    probs, _ = predict_batches(
        ckpt.model,
        loader,
        device=resolve_device(accelerator),
        precision=precision,
        tta=tta,
        fill=ckpt.preprocessing.normalized(0.0),
    )
    targets = (torch.tensor(labels) == ckpt.positive_index).long()
    return Predictions(files=files, targets=targets, probs=probs)


def _labelled_folder_loader(ckpt: LoadedCheckpoint, args: dict[str, Any]):
    root = Path(args["root"]).expanduser()
    if not (root / "test").is_dir() and (root / "train").is_dir():
        raise FileNotFoundError(
            f"There is no test split: {root / 'test'} does not exist. Add a test/ folder with "
            "the same class folders as train/, or point data.root at a labelled folder."
        )
    return labelled_folder_loader(
        root / "test" if (root / "test").is_dir() else root,
        ckpt.class_names,
        ckpt.preprocessing,
        cache_dir=(Path(args["cache_dir"]) if args.get("cache_dir") else default_cache_dir())
        if args.get("cache", True)
        else None,
        on_bad_image=args.get("on_bad_image") or "error",
        batch_size=args.get("eval_batch_size") or 64,
        num_workers=args.get("num_workers") or 0,
        warn=lambda m: log.warning("%s", m),
    )


def _training_split_loader(ckpt: LoadedCheckpoint, args: dict[str, Any], split: str):
    datamodule = ChestXRayDataModule(**args)
    if split == "holdout" and not args.get("holdout_root"):
        raise ValueError(
            "split=holdout needs a holdout folder: the checkpoint's run had none, so pass "
            "data.holdout_root=..."
        )
    datamodule.setup("fit")
    return datamodule.files(split), datamodule.labels(split), datamodule.eval_dataloader(split)


def confident_mistakes(preds: Predictions, threshold: float, k: int = 8) -> list[int]:
    """Indices of the ``k`` wrong predictions farthest from the threshold, worst first."""
    predicted = (preds.probs > threshold).long()
    wrong = torch.nonzero(predicted != preds.targets).flatten()
    margin = (preds.probs[wrong] - threshold).abs()
    return wrong[torch.argsort(margin, descending=True)][:k].tolist()


def report(
    preds: Predictions,
    threshold: float,
    *,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Metrics at ``threshold`` and at 0.5, each with a percentile bootstrap interval."""
    probs, targets = preds.probs.float(), preds.targets.long()
    out: dict[str, Any] = {}
    with torch.random.fork_rng(), warnings.catch_warnings():
        torch.manual_seed(seed)  # the same report for the same predictions
        warnings.simplefilter("ignore")  # resamples without a class warn per metric
        for key, t in (("metrics", threshold), ("metrics_at_0.5", 0.5)):
            collection = thresholded_metrics(t)
            if key == "metrics":
                collection.add_metrics(dict(ranking_metrics().items()))
            section = {}
            for name, metric in collection.items():
                value = metric.clone()(probs, targets).item()
                low, high = bootstrap_interval(
                    metric.clone(), probs, targets, resamples, confidence
                )
                section[name] = {"value": value, "ci_low": low, "ci_high": high}
            out[key] = section
    out["confusion_matrix"] = confusion_matrix(probs, targets, threshold).tolist()
    out["confusion_matrix_at_0.5"] = confusion_matrix(probs, targets, 0.5).tolist()
    out["num_images"] = len(targets)
    out["num_pneumonia"] = int(targets.sum())
    out["threshold"] = threshold
    out["bootstrap"] = {"resamples": resamples, "confidence": confidence, "seed": seed}
    return out


def markdown(result: dict[str, Any]) -> str:
    conf = f"{result['bootstrap']['confidence']:.0%}"
    t = result["threshold"]
    lines = [
        f"# Evaluation of `{result['checkpoint']}`",
        "",
        f"Split **{result['split']}** of `{result['data_root']}`: {result['num_images']} images, "
        f"{result['num_pneumonia']} PNEUMONIA. Test-time augmentation: "
        f"{'small rotations averaged' if result['tta'] else 'none'}.",
        f"Intervals: {conf} percentile bootstrap, {result['bootstrap']['resamples']} resamples.",
        _decision_line(result.get("decision"), result.get("prior_shift")),
        "",
        f"| metric | at threshold {t:.3f} | {conf} CI | at 0.5 | {conf} CI |",
        "|---|---|---|---|---|",
    ]
    at_half = result["metrics_at_0.5"]
    for name, label in METRIC_LABELS.items():
        m = result["metrics"][name]
        row = f"| {label} | {m['value']:.3f} | {m['ci_low']:.3f} - {m['ci_high']:.3f} |"
        if name in at_half:
            h = at_half[name]
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


def _decision_line(decision: dict[str, Any] | None, shift: dict[str, Any] | None) -> str:
    if not decision:
        return ""
    rule = decision["threshold_rule"]
    line = f"Threshold {decision['threshold']:.3f} from rule `{rule}`"
    if rule == "bayes":
        line += f" (cost ratio {decision['cost_ratio']:g}: 1 / (1 + cost ratio))"
    line += (
        f"; probabilities calibrated (temperature {decision['temperature']:.2f}) for a "
        f"PNEUMONIA prevalence of {decision['prevalence']:g}"
    )
    if shift:
        line += (
            f", then re-based to {shift['estimated_prevalence']:.3f}, the prevalence EM "
            "estimated for these images"
        )
    return line + "."


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.ckpt_path`` on ``cfg.split`` and write the report into the run dir."""
    from pneumonia.plots import evaluation_figures, save_figure

    check_values(cfg, EVALUATE_RULES)
    ckpt = load_checkpoint(cfg.ckpt_path)
    data = OmegaConf.to_container(cfg.data, resolve=True) if cfg.get("data") else {}
    data["eval_batch_size"] = cfg.get("batch_size")
    preds = predict_split(
        ckpt,
        cfg.split,
        data_overrides=data,
        tta=cfg.tta,
        accelerator=cfg.accelerator,
        precision=cfg.precision,
    )
    preds.probs, shift = adapt_to_prevalence(preds.probs, ckpt.decision, cfg.prior_shift)
    result = report(preds, ckpt.threshold, **cfg.bootstrap)
    result |= {
        "decision": ckpt.decision,
        "prior_shift": shift,
        "checkpoint": str(ckpt.path),
        "split": cfg.split,
        "data_root": str((data.get("root") if data else None) or ckpt.data_hparams.get("root")),
        "tta": bool(cfg.tta),
    }
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "report.json", json.dumps(result, indent=2) + "\n")
    write_text(out / "report.md", markdown(result))
    preds.write_csv(out / "predictions.csv", ckpt.threshold, ckpt.class_names, ckpt.positive_index)
    figures = evaluation_figures(
        preds.probs, preds.targets, ckpt.threshold, ckpt.class_names, cfg.split, pr=True
    )
    for name, fig in figures.items():
        save_figure(fig, out / f"{name}.png")
    log.info("\n%s", markdown(result))
    log.info("Report: %s", out / "report.md")
    return result


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="evaluate")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
