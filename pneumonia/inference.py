"""Running a trained classifier: devices, precision and test-time augmentation.

Shared by ``evaluate``, ``predict`` and the notebooks. The preprocessing that turns files into
the batches used here is the checkpoint's :class:`pneumonia.data.Preprocessing`.
"""

from __future__ import annotations

import contextlib
import csv
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF  # noqa: N812

from pneumonia.calibration import em_prevalence, shift_prevalence
from pneumonia.files import atomic_open
from pneumonia.runtime import resolve_precision

log = logging.getLogger(__name__)

# Test-time augmentation: small rotations, inside the +-10 degrees that training augments with.
# Never a horizontal mirror: a chest is not mirror-symmetric, and a model trained without flips
# has never seen a heart on the right.
TTA_DEGREES = (-5.0, 0.0, 5.0)


def autocast(device: torch.device, precision: str | int) -> contextlib.AbstractContextManager:
    """The autocast of a resolved Lightning precision (see ``runtime.resolve_precision``)."""
    precision = str(precision)
    if precision in ("bf16", "bf16-mixed"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision in ("16", "16-mixed"):
        return torch.autocast(device.type, dtype=torch.float16)
    if precision in ("32", "32-true"):
        return contextlib.nullcontext()
    raise ValueError(f"precision={precision!r}: use auto, 32-true, bf16-mixed or 16-mixed")


def inference_precision(precision: str | int, device: torch.device) -> str:
    """Resolve ``auto`` once per run, and say what was chosen."""
    choice = resolve_precision(precision, device)
    log.info("Precision %s on %s: %s", choice.precision, device.type, choice.reason)
    return choice.precision


def tta_views(images: torch.Tensor, fill: Sequence[float]) -> list[torch.Tensor]:
    """The deterministic views that ``tta`` averages: the image rotated by ``TTA_DEGREES``.

    Args:
        fill: per-channel value of the corners a rotation uncovers, in the normalised space
            (black, as training's RandomAffine fills them: ``Preprocessing.normalized(0)``).
    """
    # Rotating (image - fill) with zero padding and adding fill back is linear: exactly the
    # black-cornered rotation of the unnormalised image, normalised.
    fill_ = torch.tensor(list(fill), dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return [
        images
        if degrees == 0
        else TF.rotate(images - fill_, degrees, interpolation=InterpolationMode.BILINEAR) + fill_
        for degrees in TTA_DEGREES
    ]


@torch.inference_mode()
def pneumonia_probability(
    model: torch.nn.Module,
    images: torch.Tensor,
    *,
    tta: bool = False,
    fill: Sequence[float] | None = None,
) -> torch.Tensor:
    """(B, 3, H, W) normalised images -> (B,) PNEUMONIA probabilities.

    ``tta`` averages the probabilities of the views of :func:`tta_views` (which need ``fill``):
    deterministic, never random, and never mirrored.
    """
    if not tta:
        return model.predict_proba(images).float()
    if fill is None:
        raise ValueError("tta needs the fill of uncovered corners: Preprocessing.normalized(0)")
    views = tta_views(images, fill)
    return torch.stack([model.predict_proba(v).float() for v in views]).mean(dim=0)


def predict_batches(
    model: torch.nn.Module,
    batches: Iterable[tuple[torch.Tensor, Any]],
    *,
    device: torch.device,
    precision: str | int = "auto",
    tta: bool = False,
    fill: Sequence[float] | None = None,
) -> tuple[torch.Tensor, list[Any]]:
    """Probabilities for every batch of ``(images, extra)``; ``extra`` is passed through."""
    precision = inference_precision(precision, device)
    model.to(device).eval()
    probs, extras = [], []
    for images, extra in batches:
        with autocast(device, precision):
            images = images.to(device, non_blocking=True)
            p = pneumonia_probability(model, images, tta=tta, fill=fill)
        probs.append(p.cpu())
        extras.extend(extra.tolist() if torch.is_tensor(extra) else extra)
    return (torch.cat(probs) if probs else torch.zeros(0)), extras


PRIOR_SHIFTS = ("none", "em")


def adapt_to_prevalence(
    probs: torch.Tensor, decision: dict[str, Any], method: str = "none"
) -> tuple[torch.Tensor, dict[str, Any] | None]:
    """Probabilities re-based on the prevalence of these (unlabelled) images.

    ``em`` estimates the prevalence of the images with the EM of Saerens et al. (2002) and
    shifts every probability to it; with ``threshold_rule=bayes`` the stored threshold then
    makes the cost-minimising decision for this population. Assumes label shift: the images of
    each class look as they did in training, only their proportions differ. Needs enough
    images (dozens at least) from one population.

    Returns:
        The probabilities, and a record of the estimate (None for ``none``).
    """
    if method not in PRIOR_SHIFTS:
        raise ValueError(f"prior_shift={method!r}: use one of {', '.join(PRIOR_SHIFTS)}")
    if method == "none" or len(probs) == 0:
        return probs, None
    if decision["threshold_rule"] != "bayes":
        raise ValueError(
            f"prior_shift={method} re-bases calibrated probabilities for a Bayes decision; this "
            f"checkpoint's threshold comes from threshold_rule={decision['threshold_rule']!r}, "
            "which a prevalence shift would not move consistently. Use prior_shift=none."
        )
    source = float(decision["prevalence"])
    estimate, iterations = em_prevalence(probs, source)
    log.info(
        "Prevalence of these %d images estimated at %.3f (EM, %d iterations); the model's "
        "probabilities were for %.3f",
        len(probs),
        estimate,
        iterations,
        source,
    )
    record = {
        "method": method,
        "estimated_prevalence": estimate,
        "iterations": iterations,
        "model_prevalence": source,
        "num_images": len(probs),
    }
    return shift_prevalence(probs, source, estimate), record


# The one layout of predictions.csv, written by evaluate and predict alike. label: the true
# class where it is known (evaluate), else empty; error: why a file has no probability.
PREDICTION_COLUMNS = ("file", "label", "probability", "prediction", "threshold", "error")


def write_predictions(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write ``rows`` as ``predictions.csv``, atomically (complete or absent); numbers with
    six decimals, missing values empty."""

    def cell(value: Any) -> str:
        if value is None:
            return ""
        return f"{value:.6f}" if isinstance(value, float) else str(value)

    with atomic_open(path, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=PREDICTION_COLUMNS, extrasaction="raise")
        writer.writeheader()
        writer.writerows({c: cell(row.get(c)) for c in PREDICTION_COLUMNS} for row in rows)
