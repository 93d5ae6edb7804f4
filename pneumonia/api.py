"""The Python API for notebooks and scripts: plain values back, files only when asked.

    import pneumonia

    cfg = pneumonia.compose("train", ["experiment=demo"])   # what pneumonia-train would run
    clf = pneumonia.load("outputs/train/runs/<run>/checkpoints/last.ckpt")
    table = clf.predict(["a.jpeg", "b.png"])            # pandas DataFrame, one row per image
    probs = clf.probabilities([pil_image])              # tensor of PNEUMONIA probabilities
    heat, picture = clf.gradcam("a.jpeg")               # map in [0, 1], overlay on the X-ray
    report, table = clf.evaluate("/data/hospital_b")    # metrics with intervals, per-image rows

Everything goes through the checkpoint's own preprocessing, threshold and decision record,
and through the same library functions as ``pneumonia-predict`` and ``pneumonia-evaluate``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from pneumonia.config import compose
from pneumonia.data.readers import FOLDERS
from pneumonia.decision.metrics import BOOTSTRAP_RESAMPLES
from pneumonia.decision.predictions import prediction_columns, prediction_rows
from pneumonia.decision.prior_shift import flag_and_rebase
from pneumonia.decision.rules import Decision
from pneumonia.decision.shift import ShiftReference
from pneumonia.errors import InputValueError
from pneumonia.evaluation import EVALUATE_BATCH_SIZE, evaluate_checkpoint
from pneumonia.inference.runner import (
    PREDICT_BATCH_SIZE,
    autocast,
    inference_precision,
    predict_files,
    probabilities,
    score_images,
)
from pneumonia.models.checkpoint import LoadedCheckpoint, load_checkpoint
from pneumonia.system.runtime import resolve_device

__all__ = ["Classifier", "compose", "load"]
ImageInput = str | Path | Image.Image


def _table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows of ``predictions.csv`` as a DataFrame; a missing probability or score is NaN."""
    table = pd.DataFrame(rows, columns=prediction_columns(rows))
    for column in ("probability", "shift_score"):
        table[column] = table[column].astype(float)
    return table


class Classifier:
    """A trained checkpoint, on a device, at a precision."""

    def __init__(
        self,
        ckpt: LoadedCheckpoint,
        *,
        device: str = "auto",
        precision: str = "auto",
        threshold: str | float | None = None,
        max_upscale: float | None = None,
    ) -> None:
        """``threshold``: None for the stored one, a name of the checkpoint's table chosen on
        validation (``"spec95"``, ``"sens90"``, ... : ``ckpt.thresholds``), or a number.
        ``max_upscale``: None for the checkpoint's ``data.max_upscale`` (images the resize
        would enlarge more along a side are refused), or a larger one for small images."""
        ckpt.use_threshold(threshold)
        ckpt.use_max_upscale(max_upscale)
        self.ckpt = ckpt
        self.device = resolve_device(device)
        self.precision = inference_precision(precision, self.device)
        self.model = ckpt.model.to(self.device).eval()

    @property
    def threshold(self) -> float:
        return self.ckpt.threshold

    @property
    def class_names(self) -> list[str]:
        return self.ckpt.class_names

    @property
    def shift(self) -> ShiftReference | None:
        """What the training images looked like (``pneumonia.decision.shift``); None for a
        checkpoint written before shift references existed."""
        return self.ckpt.shift

    @property
    def decision(self) -> Decision:
        """The threshold rule, cost ratio, prevalence and temperature behind ``threshold``."""
        return self.ckpt.decision

    # ------------------------------------------------------------------ inputs
    def batch(
        self, images: Sequence[ImageInput] | torch.Tensor, *, tta: bool = False
    ) -> torch.Tensor:
        """Files or Pillow images -> the normalised (B, 3, crop, crop) batch the model sees (with
        ``tta``, the (B, V, 3, crop, crop) views of each).

        A tensor is taken as such a batch already (as ``Preprocessing.collate`` makes them).
        """
        if torch.is_tensor(images):
            if images.ndim != 4 or images.shape[1] != 3:
                raise InputValueError(
                    f"a tensor input must be a normalised (B, 3, H, W) batch, got "
                    f"{tuple(images.shape)}: pass file paths or PIL images to have them "
                    "preprocessed"
                )
            if tta:
                raise InputValueError(
                    "tta turns each image before its crop: pass file paths or PIL images, not "
                    "a batch that is cropped already"
                )
            return images.float()
        pre = self.ckpt.preprocessing
        loaded = [self._load(image, tta=tta) for image in images]
        return pre.collate([(t, 0) for t in loaded])[0]

    def _load(self, image: ImageInput, *, tta: bool = False) -> torch.Tensor:
        pre = self.ckpt.preprocessing
        if isinstance(image, Image.Image):
            return pre.load_image(image, tta=tta)
        return pre.load(Path(image), tta=tta)

    # ------------------------------------------------------------------ outputs
    def probabilities(
        self, images: Sequence[ImageInput] | torch.Tensor, *, tta: bool = False
    ) -> torch.Tensor:
        """Calibrated PNEUMONIA probability per image (CPU float tensor); ``tta`` averages the
        image turned by -5, 0 and +5 degrees."""
        batch = self.batch(images, tta=tta).to(self.device)
        with autocast(self.device, self.precision):
            probs = probabilities(self.model, batch)
        return probs.float().cpu()

    def predict(
        self,
        images: Sequence[ImageInput] | torch.Tensor,
        *,
        tta: bool = False,
        prior_shift: str = "none",
        batch_size: int = PREDICT_BATCH_SIZE,
    ) -> pd.DataFrame:
        """One row per image, the columns of ``predictions.csv``: file (the path, or
        ``image[i]`` / ``tensor[i]``), label (empty), probability, prediction at the threshold,
        threshold, shift_score and in_distribution (empty without a shift reference), error.

        Unreadable files get their error instead of stopping the call; ``prior_shift="em"``
        re-bases the probabilities on the prevalence of these images (see ``evaluate``).
        """
        if not torch.is_tensor(images):
            inputs = [im if isinstance(im, Image.Image) else Path(im) for im in images]
            rows = predict_files(
                self.ckpt,
                inputs,
                device=self.device,
                precision=self.precision,
                batch_size=batch_size,
                tta=tta,
                prior_shift=prior_shift,
            )
            return _table(rows)
        reference = self.ckpt.shift
        with autocast(self.device, self.precision):
            batch = self.batch(images, tta=tta).to(self.device)
            probs, shift = score_images(self.model, batch, shift=reference)
        probs, _ = flag_and_rebase(
            probs.float().cpu(), shift, self.ckpt.shift, self.decision, prior_shift,
            self.ckpt.class_probabilities,
        )  # fmt: skip
        return _table(
            prediction_rows(
                [f"tensor[{i}]" for i in range(len(probs))],
                probs.tolist(),
                threshold=self.threshold,
                class_names=self.class_names,
                positive_index=self.ckpt.positive_index,
                shift_scores=None if shift is None else shift.tolist(),
                shift_threshold=reference.threshold if reference else None,
            )
        )

    def gradcam(self, image: ImageInput) -> tuple[np.ndarray, np.ndarray]:
        """Grad-CAM for PNEUMONIA on one image: the (crop, crop) map in [0, 1] that the model's
        input gives, and an RGB overlay of it on the original image (at most 1024 px a side;
        what the crop cut off is dimmed)."""
        from pneumonia.inference.explain import gradcam, original_gray, overlay_on_original

        pre = self.ckpt.preprocessing
        item = image if isinstance(image, Image.Image) else Path(image)
        heat = gradcam(self.model, self.batch([item]))[0]
        return heat, overlay_on_original(original_gray(item, pre), heat, pre)

    def evaluate(
        self,
        folder: str | Path | None = None,
        *,
        split: str = "test",
        tta: bool = False,
        prior_shift: str = "none",
        resamples: int = BOOTSTRAP_RESAMPLES,
        batch_size: int = EVALUATE_BATCH_SIZE,
        table: Mapping[str, Any] | None = None,
        prevalence: float | None = None,
    ) -> tuple[dict[str, Any], pd.DataFrame]:
        """Metrics with bootstrap intervals and the per-image table of ``predictions.csv``.

        Args:
            folder: a labelled folder (``folder/test/<CLASS>/`` or ``folder/<CLASS>/``); None:
                the training run's data folder.
            split: ``test`` (the folder's labelled images), or ``val``, ``train`` or
                ``holdout``: the training run's splits, rebuilt from its data folder.
            table: read ``folder`` as a table of images (``{"reader": "nih"}``, a label file
                ``{"reader": "manifest", "file": ...}``; ``pneumonia.data.readers``); its
                attributes become columns of the returned table.
            prevalence: a clinic's PNEUMONIA prevalence: the report's operating points add PPV
                and NPV at the stored threshold for it.
        """
        result, preds = evaluate_checkpoint(
            self.ckpt,
            split,
            device=self.device,
            precision=self.precision,
            tta=tta,
            prior_shift=prior_shift,
            batch_size=batch_size,
            data={
                "root": str(folder) if folder is not None else None,
                # a folder without a table is a labelled folder, whatever the run read
                "table": table if table or folder is None else {"reader": FOLDERS},
            },
            resamples=resamples,
            prevalence=prevalence,
        )
        return result, _table(preds.rows(self.class_names, self.ckpt.positive_index))


def load(
    path: str | Path,
    *,
    device: str = "auto",
    precision: str = "auto",
    threshold: str | float | None = None,
    max_upscale: float | None = None,
) -> Classifier:
    """A checkpoint of a ``pneumonia`` training run, ready to predict (safe loading), deciding
    at its stored threshold or at ``threshold`` (a name of its table, ``"spec95"``, or a
    number), refusing images its ``data.max_upscale`` (or ``max_upscale``) refuses."""
    return Classifier(
        load_checkpoint(path),
        device=device,
        precision=precision,
        threshold=threshold,
        max_upscale=max_upscale,
    )
