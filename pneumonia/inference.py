"""Running a trained classifier: devices, precision, test-time augmentation, files in, rows out.

Shared by evaluation, ``predict``, the API and the notebooks. The preprocessing that turns
files into the batches used here is the checkpoint's :class:`pneumonia.data.Preprocessing`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF  # noqa: N812

from pneumonia.checkpoint import LoadedCheckpoint
from pneumonia.data.images import BadImageError
from pneumonia.predictions import prediction_rows
from pneumonia.prior_shift import adapt_to_prevalence, check_prior_shift
from pneumonia.runtime import decode_threads, resolve_precision
from pneumonia.shift import ShiftReference

log = logging.getLogger(__name__)

# Test-time augmentation: small rotations, inside the +-10 degrees that training augments with.
# Never a horizontal mirror: a chest is not mirror-symmetric, and a model trained without flips
# has never seen a heart on the right.
TTA_DEGREES = (-5.0, 0.0, 5.0)
# Images per batch when predicting files (predict.yaml's batch_size mirrors it; a test holds
# them equal). Grad-CAM keeps every activation of a batch, so it is smaller than evaluation's.
PREDICT_BATCH_SIZE = 32


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
    """Resolve ``auto`` once per run, and say what was chosen (and why, for ``auto``)."""
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
def probabilities(
    model: torch.nn.Module,
    images: torch.Tensor,
    *,
    tta: bool = False,
    fill: Sequence[float] | None = None,
) -> torch.Tensor:
    """(B, 3, H, W) normalised images -> (B,) calibrated PNEUMONIA probabilities (the model's
    ``probabilities``).

    ``tta`` averages the probabilities of the views of :func:`tta_views` (which need ``fill``):
    deterministic, never random, and never mirrored.
    """
    if not tta:
        return model.probabilities(images).float()
    if fill is None:
        raise ValueError("tta needs the fill of uncovered corners: Preprocessing.normalized(0)")
    views = tta_views(images, fill)
    return torch.stack([model.probabilities(v).float() for v in views]).mean(dim=0)


@torch.inference_mode()
def score_images(
    model: torch.nn.Module,
    images: torch.Tensor,
    *,
    tta: bool = False,
    fill: Sequence[float] | None = None,
    shift: ShiftReference | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B, 3, H, W) normalised images -> (B,) calibrated probabilities (see
    :func:`probabilities`) and (B,) shift scores of the plain images (None without a
    reference), from one forward pass."""
    if shift is None:
        return probabilities(model, images, tta=tta, fill=fill), None
    features = model.features(images)
    logits = model.head(features)
    if tta:
        probs = probabilities(model, images, tta=True, fill=fill)
    else:
        probs = model.calibrate(model.score(logits)).float()
    return probs, shift.score(features, logits)


def predict_batches(
    ckpt: LoadedCheckpoint,
    batches: Iterable[tuple[torch.Tensor, Any]],
    *,
    device: torch.device,
    precision: str,
    tta: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(N,) probabilities and (N,) shift scores (None for a checkpoint without a shift
    reference) of every batch of ``(images, labels)``, in order, on the CPU.

    Args:
        precision: a resolved precision (see :func:`inference_precision`).
    """
    model = ckpt.model.to(device).eval()
    fill = ckpt.preprocessing.normalized(0.0)  # the corners TTA's rotations uncover: black
    probs, shifts = [], []
    for images, _ in batches:
        with autocast(device, precision):
            p, s = score_images(
                model, images.to(device, non_blocking=True), tta=tta, fill=fill, shift=ckpt.shift
            )
        probs.append(p.cpu())
        shifts.append(s)
    if not probs:
        return torch.zeros(0), (torch.zeros(0) if ckpt.shift else None)
    return torch.cat(probs), (torch.cat(shifts) if ckpt.shift else None)


def predict_files(
    ckpt: LoadedCheckpoint,
    inputs: Sequence[Path | Image.Image],
    *,
    device: torch.device,
    precision: str,
    batch_size: int = PREDICT_BATCH_SIZE,
    tta: bool = False,
    prior_shift: str = "none",
    gradcam_dir: Path | None = None,
    root: Path | None = None,
) -> list[dict[str, Any]]:
    """One row of ``predictions.csv`` per input (a file, or an opened Pillow image): the
    calibrated PNEUMONIA probability and the class at the stored threshold, or why there is
    none. An unreadable input does not stop the others.

    Args:
        precision: a resolved precision (see :func:`inference_precision`).
        prior_shift: ``em`` re-bases the probabilities on the prevalence of these inputs
            (``pneumonia.prior_shift``).
        gradcam_dir: also write a Grad-CAM overlay per image there, named after its path
            below ``root``.
    """
    check_prior_shift(prior_shift, ckpt.decision, len(inputs))  # before any work
    pre = ckpt.preprocessing
    model = ckpt.model.to(device).eval()

    def load(item: Path | Image.Image) -> tuple[torch.Tensor | None, str | None]:
        try:
            image = pre.load_image(item) if isinstance(item, Image.Image) else pre.load(item)
            return image, None
        except (BadImageError, ValueError) as e:
            return None, str(e)

    probs: dict[int, float] = {}
    shifts: dict[int, float] = {}
    errors: dict[int, str] = {}
    with ThreadPoolExecutor(max_workers=decode_threads()) as pool:
        for start in range(0, len(inputs), batch_size):
            chunk = range(start, min(start + batch_size, len(inputs)))
            loaded = dict(zip(chunk, pool.map(load, [inputs[i] for i in chunk]), strict=True))
            errors |= {i: err for i, (_, err) in loaded.items() if err}
            good = [(i, image) for i, (image, _) in loaded.items() if image is not None]
            if not good:
                continue
            images, _ = pre.collate([(image, 0) for _, image in good])
            with autocast(device, precision):
                p, s = score_images(
                    model, images.to(device), tta=tta, fill=pre.normalized(0.0), shift=ckpt.shift
                )
            probs |= dict(zip([i for i, _ in good], p.cpu().tolist(), strict=True))
            if s is not None:
                shifts |= dict(zip([i for i, _ in good], s.tolist(), strict=True))
            if gradcam_dir is not None:
                from pneumonia.explain import write_gradcams

                named = {i: inputs[i] for i, _ in good}
                write_gradcams(ckpt, named, images, gradcam_dir, root)
    flagged = None
    if ckpt.shift is not None and shifts:
        inside = ckpt.shift.in_distribution(torch.tensor(list(shifts.values())))
        flagged = int((~inside).sum())
        warn_if_unlike_training(flagged, len(shifts), ckpt.shift)
    # The prevalence is a property of the whole set of images, so it is re-based at the end.
    adapted, _ = adapt_to_prevalence(
        torch.tensor(list(probs.values())),
        ckpt.decision,
        prior_shift,
        flagged_share=None if flagged is None else flagged / len(shifts),
    )
    probs = dict(zip(probs, adapted.tolist(), strict=True))
    return prediction_rows(
        [f"image[{i}]" if isinstance(x, Image.Image) else str(x) for i, x in enumerate(inputs)],
        [probs.get(i) for i in range(len(inputs))],
        threshold=ckpt.threshold,
        class_names=ckpt.class_names,
        positive_index=ckpt.positive_index,
        errors=errors,
        shift_scores=[shifts.get(i) for i in range(len(inputs))] if ckpt.shift else None,
        shift_threshold=ckpt.shift.threshold if ckpt.shift else None,
    )


# Above this share of flagged images, a run warns that its figures may not hold.
WARN_SHARE = 0.20


def warn_if_unlike_training(flagged: int, total: int, shift: ShiftReference) -> None:
    """Log how many images were flagged, and warn, in words a clinician reads, when more than
    :data:`WARN_SHARE` of them were."""
    share = flagged / total if total else 0.0
    log.info(
        "%d of %d images (%.0f%%) flagged as unlike the training images (shift score above "
        "%.4g, %s; it flags %.0f%% of the validation images)",
        flagged, total, 100 * share, shift.threshold, shift.method, 100 * shift.flag_rate,
    )  # fmt: skip
    if share > WARN_SHARE:
        log.warning(
            "%.0f%% of these images do not look like the images this model was trained on. "
            "Its probabilities, and any figure computed from them, may not hold for these "
            "images: do not rely on them without checking them by other means.",
            100 * share,
        )
