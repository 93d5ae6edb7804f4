"""Checks of how a trained model will hold up on new patients, beyond the validation split.

A patient-grouped validation split of the Kermany training collection saturates (AUROC 0.999)
while the official test split scores 0.93: the validation images come from the same scanners,
the same export and the same preprocessing as the training images. Two checks see further:

- **holdout**: original-resolution files of patients kept out of training altogether
  (``data.holdout_root``). They reach the model through the evaluation preprocessing from the
  original file, as a new hospital's images would, and not through the copy the model trained
  on. Small in practice (a few hundred images), so its intervals are wide.
- **degraded**: the validation images under simulated acquisition changes: gamma, contrast,
  blur, noise and a lower resolution, each at a strength a different scanner or export could
  plausibly produce. A model that leans on the exact grey levels or texture of one scanner
  loses ranking here first.

Each check reports AUROC with a bootstrap interval, the proper scores (log loss and Brier at
the split's own prevalence, where they cannot saturate), and accuracy, sensitivity and
specificity at the model's stored threshold.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torchmetrics.classification import BinaryAUROC
from torchvision.transforms.v2 import functional as TF  # noqa: N812

from pneumonia.decision.calibration import brier, nll, shift_prevalence
from pneumonia.decision.metrics import BOOTSTRAP_RESAMPLES, metrics_at, with_interval
from pneumonia.decision.predictions import Predictions
from pneumonia.decision.shift import ShiftReference, reference_from_features
from pneumonia.inference.runner import autocast

Degradation = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _gamma(g: float) -> Degradation:
    return lambda x, _: x.clamp(0, 1) ** g


def _contrast(factor: float) -> Degradation:
    def apply(x: torch.Tensor, _: torch.Generator) -> torch.Tensor:
        mean = x.mean(dim=(-2, -1), keepdim=True)
        return ((x - mean) * factor + mean).clamp(0, 1)

    return apply


def _blur(sigma: float) -> Degradation:
    kernel = 2 * round(3 * sigma) + 1
    return lambda x, _: TF.gaussian_blur(x, [kernel, kernel], [sigma, sigma])


def _noise(std: float) -> Degradation:
    return lambda x, g: (x + std * torch.randn(x.shape, generator=g)).clamp(0, 1)


def _lower_resolution(scale: float) -> Degradation:
    def apply(x: torch.Tensor, _: torch.Generator) -> torch.Tensor:
        h, w = x.shape[-2:]
        small = TF.resize(x, [round(h * scale), round(w * scale)], antialias=True)
        return TF.resize(small, [h, w], antialias=True).clamp(0, 1)

    return apply


# On [0, 1] gray images at the model's input size.
DEGRADATIONS: dict[str, Degradation] = {
    "gamma_0.7": _gamma(0.7),
    "gamma_1.4": _gamma(1.4),
    "contrast_0.7": _contrast(0.7),
    "blur_1.5px": _blur(1.5),
    "noise_0.04": _noise(0.04),
    "half_resolution": _lower_resolution(0.5),
}


def degrade(
    images: torch.Tensor,
    degradation: Degradation,
    mean: Sequence[float],
    std: Sequence[float],
    generator: torch.Generator,
) -> torch.Tensor:
    """Normalised (B, 3, H, W) gray batch -> the same batch degraded, normalised again."""
    m = torch.tensor(list(mean), dtype=images.dtype).view(1, -1, 1, 1)
    s = torch.tensor(list(std), dtype=images.dtype).view(1, -1, 1, 1)
    gray = (images.cpu() * s + m)[:, :1]  # the three channels repeat one gray image
    out = degradation(gray, generator).expand(-1, images.shape[1], -1, -1)
    return (out - m) / s


@dataclass
class Outputs:
    """What the model makes of every image of one view of a split."""

    scores: list[torch.Tensor] = field(default_factory=list)  # logit differences
    features: list[torch.Tensor] = field(default_factory=list)  # penultimate features
    logits: list[torch.Tensor] = field(default_factory=list)

    def add(self, model, features: torch.Tensor) -> None:
        logits = model.head(features)
        self.scores.append(model.score(logits).float().cpu())
        self.features.append(features.float().cpu())
        self.logits.append(logits.float().cpu())

    def cat(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return torch.cat(self.scores), torch.cat(self.features), torch.cat(self.logits)


@torch.inference_mode()
def outputs(
    model, loader, *, device, precision, degradations: dict[str, Degradation], mean, std, seed
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]], torch.Tensor]:
    """Per view (``clean`` and each degradation): scores, features and logits of every image,
    and the images' targets (1 = PNEUMONIA)."""
    model.to(device).eval()
    generator = torch.Generator().manual_seed(seed)
    views_out = {"clean": Outputs(), **{k: Outputs() for k in degradations}}
    labels = []
    for images, targets in loader:
        views = {"clean": images}
        views |= {k: degrade(images, d, mean, std, generator) for k, d in degradations.items()}
        for name, view in views.items():
            with autocast(device, precision):
                views_out[name].add(model, model.features(view.to(device)))
        labels.append((targets == model.positive_index).long())
    return {k: v.cat() for k, v in views_out.items()}, torch.cat(labels)


def fit_shift_reference(
    model, datamodule, *, device: torch.device, precision: str, method: str, flag_rate: float
) -> ShiftReference:
    """The shift reference of a trained model: fitted on its training images' features (with
    the evaluation preprocessing), its threshold set on the validation images."""
    pre = datamodule.preprocessing
    common = {"device": device, "precision": precision, "degradations": {}, "mean": pre.mean,
              "std": pre.std, "seed": 0}  # fmt: skip
    train, train_targets = outputs(model, datamodule.eval_dataloader("train"), **common)
    val, _ = outputs(model, datamodule.eval_dataloader("val"), **common)
    return reference_from_features(
        method,
        train["clean"][1],
        train_targets,
        val["clean"][1],
        val["clean"][2],
        flag_rate=flag_rate,
    )


def summarise(
    probs: torch.Tensor,
    targets: torch.Tensor,
    threshold: float,
    prevalence: float,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """AUROC with its interval, proper scores at the split's prevalence, thresholded metrics.

    Args:
        prevalence: the prevalence ``probs`` are calibrated for (the model's).
    """
    n, positives = len(targets), int(targets.sum())
    out: dict[str, Any] = {"num_images": n, "num_pneumonia": positives}
    if n == 0 or positives in (0, n):
        return out
    own = positives / n
    at_own = shift_prevalence(probs, prevalence, own)
    # Rank 0 alone runs the checks: metrics must not wait for the other ranks.
    auroc = with_interval(BinaryAUROC(sync_on_compute=False), probs, targets,
                          resamples=resamples, seed=seed)  # fmt: skip
    at = metrics_at(probs, targets, threshold)
    out |= {
        "auroc": auroc["value"],
        "auroc_ci": [auroc["ci_low"], auroc["ci_high"]],
        "nll": nll(at_own, targets),
        "brier": brier(at_own, targets),
        "accuracy": at["accuracy"],
        "sensitivity": at["recall"],
        "specificity": at["specificity"],
        "threshold": threshold,
    }
    return out


def validation_passes(degraded: bool = True) -> int:
    """How many times :func:`run_checks` goes over the validation split (for time budgets)."""
    return 1 + (len(DEGRADATIONS) if degraded else 0)


def run_checks(
    model,
    datamodule,
    *,
    device: torch.device,
    precision: str,
    degraded: bool = True,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    shift: ShiftReference | None = None,
    keep: dict[str, Predictions] | None = None,
) -> dict[str, Any]:
    """The checks of this module for a trained model and its (set-up) DataModule.

    Args:
        precision: the resolved precision the model trained at (not ``auto``).
        shift: with a shift reference, each check also reports the share of its images
            flagged as unlike the training images (``share_flagged``).
        keep: filled with each split's per-image predictions (clean views), with files and
            attributes: the rows of ``val_predictions.csv``.
    """
    pre = datamodule.preprocessing
    threshold = float(model.threshold)
    prevalence = float(model.hparams.prevalence)
    results: dict[str, Any] = {}
    splits = {"val": DEGRADATIONS if degraded else {}}
    if datamodule.has_split("holdout"):
        splits["holdout"] = {}
    for split, degradations in splits.items():
        views, targets = outputs(
            model,
            datamodule.eval_dataloader(split),
            device=device,
            precision=precision,
            degradations=degradations,
            mean=pre.mean,
            std=pre.std,
            seed=seed,
        )
        for name, (scores, features, logits) in views.items():
            key = split if name == "clean" else f"{split}_{name}"
            if keep is not None and name == "clean":
                listing = datamodule.listing(split)
                keep[split] = Predictions(
                    model.calibrate(scores),
                    targets,
                    threshold,
                    files=listing.files,
                    shift=None if shift is None else shift.score(features, logits),
                    shift_threshold=None if shift is None else shift.threshold,
                    attributes=listing.attribute_rows(),
                )
            results[key] = summarise(
                model.calibrate(scores), targets, threshold, prevalence, resamples=resamples
            )
            if shift is not None:
                flagged = ~shift.in_distribution(shift.score(features, logits))
                results[key]["share_flagged"] = float(flagged.float().mean())
    shifted = [results[f"val_{k}"] for k in DEGRADATIONS if f"val_{k}" in results]
    if shifted and all("auroc" in r for r in shifted):
        keys = ["auroc", "nll", "brier", "accuracy", "sensitivity", "specificity"]
        keys += ["share_flagged"] if all("share_flagged" in r for r in shifted) else []
        results["val_degraded_mean"] = {k: sum(r[k] for r in shifted) / len(shifted) for k in keys}
    return results


def log_checks(checks: dict[str, Any], log: logging.Logger) -> None:
    """One line per check: AUROC with its interval, NLL, and the thresholded metrics."""
    for name, r in checks.items():
        if "auroc" in r and "auroc_ci" in r:
            low, high = r["auroc_ci"]
            flagged = f"  flagged {r['share_flagged']:.1%}" if "share_flagged" in r else ""
            log.info(
                "Check %-26s AUROC %.3f (%.3f-%.3f)  NLL %.3f  acc %.3f  sens %.3f  spec %.3f%s",
                name, r["auroc"], low, high, r["nll"], r["accuracy"], r["sensitivity"],
                r["specificity"], flagged,
            )  # fmt: skip
