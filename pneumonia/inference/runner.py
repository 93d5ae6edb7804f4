"""Running a trained classifier: devices, precision, views (test-time augmentation), files in,
rows out.

Shared by evaluation, ``predict``, the API and the notebooks. The preprocessing that turns
files into the batches used here is the checkpoint's :class:`pneumonia.data.Preprocessing`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from pneumonia.data.images import BadImageError
from pneumonia.data.preprocessing import TTA_DEGREES
from pneumonia.data.usable import not_there
from pneumonia.decision.predictions import prediction_rows
from pneumonia.decision.prior_shift import check_prior_shift, flag_and_rebase
from pneumonia.decision.shift import ShiftReference
from pneumonia.errors import InputValueError
from pneumonia.models.checkpoint import LoadedCheckpoint
from pneumonia.system.pools import threads
from pneumonia.system.runtime import decode_threads, resolve_precision

log = logging.getLogger(__name__)

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
    raise InputValueError(f"precision={precision!r}: use auto, 32-true, bf16-mixed or 16-mixed")


def inference_precision(precision: str | int, device: torch.device) -> str:
    """Resolve ``auto`` once per run, and say what was chosen (and why, for ``auto``)."""
    choice = resolve_precision(precision, device)
    log.info("Precision %s on %s: %s", choice.precision, device.type, choice.reason)
    return choice.precision


@torch.inference_mode()
def probabilities(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) normalised images -> (B,) calibrated PNEUMONIA probabilities (the model's
    ``probabilities``); their (B, V, 3, H, W) views (``tta``: ``Preprocessing.tta_transform``)
    -> the mean over each image's views."""
    if images.ndim == 5:
        b, v = images.shape[:2]
        return model.probabilities(images.flatten(0, 1)).float().view(b, v).mean(dim=1)
    return model.probabilities(images).float()


@torch.inference_mode()
def score_images(
    model: torch.nn.Module, images: torch.Tensor, *, shift: ShiftReference | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Normalised images (or their views) -> (B,) calibrated probabilities (see
    :func:`probabilities`) and (B,) shift scores of the unturned images (None without a
    reference)."""
    if shift is None:
        return probabilities(model, images), None
    plain = images[:, TTA_DEGREES.index(0.0)] if images.ndim == 5 else images
    features = model.features(plain)
    logits = model.head(features)
    if images.ndim == 5:
        probs = probabilities(model, images)
    else:
        probs = model.calibrate(model.score(logits)).float()
    return probs, shift.score(features, logits)


def predict_batches(
    ckpt: LoadedCheckpoint,
    batches: Iterable[tuple[torch.Tensor, Any]],
    *,
    device: torch.device,
    precision: str,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(N,) probabilities and (N,) shift scores (None for a checkpoint without a shift
    reference) of every batch of ``(images, labels)``, in order, on the CPU; a batch of views
    (``tta``) is averaged over each image's views.

    Args:
        precision: a resolved precision (see :func:`inference_precision`).
    """
    model = ckpt.model.to(device).eval()
    probs, shifts = [], []
    for images, _ in batches:
        with autocast(device, precision):
            p, s = score_images(model, images.to(device, non_blocking=True), shift=ckpt.shift)
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
            (``pneumonia.decision.prior_shift``).
        gradcam_dir: also write a Grad-CAM overlay per image there, named after its path
            below ``root``.
    """
    check_prior_shift(prior_shift, ckpt.decision, len(inputs))  # before any work
    pre = ckpt.preprocessing
    model = ckpt.model.to(device).eval()

    def load(item: Path | Image.Image) -> tuple[torch.Tensor | None, str | None]:
        try:
            if isinstance(item, Image.Image):
                return pre.load_image(item, tta=tta), None
            if gone := not_there(Path(item)):  # a broken link: named, with where it leads
                return None, gone
            return pre.load(item, tta=tta), None
        except (BadImageError, ValueError) as e:
            return None, str(e)

    probs: dict[int, float] = {}
    shifts: dict[int, float] = {}
    errors: dict[int, str] = {}
    with threads(decode_threads()) as pool:  # Ctrl-C drops the queued files
        for start in range(0, len(inputs), batch_size):
            chunk = range(start, min(start + batch_size, len(inputs)))
            loaded = dict(zip(chunk, pool.map(load, [inputs[i] for i in chunk]), strict=True))
            errors |= {i: err for i, (_, err) in loaded.items() if err}
            good = [(i, image) for i, (image, _) in loaded.items() if image is not None]
            if not good:
                continue
            images, _ = pre.collate([(image, 0) for _, image in good])
            with autocast(device, precision):
                p, s = score_images(model, images.to(device), shift=ckpt.shift)
            probs |= dict(zip([i for i, _ in good], p.cpu().tolist(), strict=True))
            if s is not None:
                shifts |= dict(zip([i for i, _ in good], s.tolist(), strict=True))
            if gradcam_dir is not None:
                from pneumonia.inference.explain import write_gradcams

                named = {i: inputs[i] for i, _ in good}
                plain = images[:, TTA_DEGREES.index(0.0)] if tta else images
                for why in write_gradcams(ckpt, named, plain, gradcam_dir, root).values():
                    log.warning("%s (its prediction stands)", why)
    # The prevalence is a property of the whole set of images, so it is re-based at the end.
    adapted, _ = flag_and_rebase(
        torch.tensor(list(probs.values())),
        torch.tensor(list(shifts.values())) if ckpt.shift is not None else None,
        ckpt.shift,
        ckpt.decision,
        prior_shift,
        ckpt.class_probabilities,
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
