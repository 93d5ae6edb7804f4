"""The Python API for notebooks and scripts: plain values back, files only when asked.

    import pneumonia

    cfg = pneumonia.compose(["experiment=demo", "model.lr=1e-3"])   # what the CLI would run
    clf = pneumonia.load("outputs/train/runs/<run>/checkpoints/last.ckpt")
    table = clf.predict(["a.jpeg", "b.png"])            # pandas DataFrame, one row per image
    probs = clf.probabilities([pil_image])              # tensor of PNEUMONIA probabilities
    heat, picture = clf.gradcam("a.jpeg")               # (H, W) map in [0, 1], RGB overlay
    report, table = clf.evaluate("/data/hospital_b")    # metrics with intervals, per-image rows

Everything goes through the checkpoint's own preprocessing, threshold and decision record,
exactly as ``pneumonia-predict`` and ``pneumonia-evaluate`` do.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from pneumonia.checkpoint import LoadedCheckpoint, load_checkpoint
from pneumonia.config import compose as _compose
from pneumonia.evaluate import predict_split, report
from pneumonia.inference import (
    PREDICTION_COLUMNS,
    adapt_to_prevalence,
    autocast,
    inference_precision,
    pneumonia_probability,
)
from pneumonia.predict import predict_files
from pneumonia.runtime import resolve_device

ImageInput = str | Path | Image.Image


def compose(
    overrides: Sequence[str] = (),
    config_name: str = "train",
    *,
    output_dir: str | Path | None = None,
):
    """The config ``pneumonia-<config_name> <overrides>`` would run with (a DictConfig)."""
    return _compose(config_name, overrides, output_dir=output_dir)


class Classifier:
    """A trained checkpoint, on a device, at a precision."""

    def __init__(
        self, ckpt: LoadedCheckpoint, *, device: str = "auto", precision: str = "auto"
    ) -> None:
        self.ckpt = ckpt
        self.device = resolve_device(device)
        self.precision = inference_precision(precision, self.device)
        self.model = ckpt.model.to(self.device).eval()

    @property
    def threshold(self) -> float:
        return self.ckpt.threshold

    @property
    def class_names(self) -> list[str]:
        return list(self.ckpt.class_names)

    @property
    def decision(self) -> dict[str, Any]:
        """The threshold rule, cost ratio, prevalence and temperature behind ``threshold``."""
        return self.ckpt.decision

    # ------------------------------------------------------------------ inputs
    def batch(self, images: Sequence[ImageInput] | torch.Tensor) -> torch.Tensor:
        """Files or Pillow images -> the normalised (B, 3, crop, crop) batch the model sees.

        A tensor is taken as such a batch already (as ``Preprocessing.collate`` makes them).
        """
        if torch.is_tensor(images):
            if images.ndim != 4 or images.shape[1] != 3:
                raise ValueError(
                    f"a tensor input must be a normalised (B, 3, H, W) batch, got "
                    f"{tuple(images.shape)}: pass file paths or PIL images to have them "
                    "preprocessed"
                )
            return images.float()
        return self._collate([self._load(im) for im in images])

    def _load(self, image: ImageInput) -> torch.Tensor:
        pre = self.ckpt.preprocessing
        return pre.load_image(image) if isinstance(image, Image.Image) else pre.load(Path(image))

    def _collate(self, loaded: list[torch.Tensor]) -> torch.Tensor:
        return self.ckpt.preprocessing.collate([(t, 0) for t in loaded])[0]

    # ------------------------------------------------------------------ outputs
    def probabilities(
        self, images: Sequence[ImageInput] | torch.Tensor, *, tta: bool = False
    ) -> torch.Tensor:
        """Calibrated PNEUMONIA probability per image (CPU float tensor)."""
        batch = self.batch(images).to(self.device)
        with autocast(self.device, self.precision):
            probs = pneumonia_probability(
                self.model, batch, tta=tta, fill=self.ckpt.preprocessing.normalized(0.0)
            )
        return probs.float().cpu()

    def predict(
        self,
        images: Sequence[ImageInput] | torch.Tensor,
        *,
        tta: bool = False,
        prior_shift: str = "none",
        batch_size: int = 32,
    ) -> pd.DataFrame:
        """One row per image, the columns of ``predictions.csv`` (file, label (empty),
        probability, prediction at the threshold, threshold, error).

        Unreadable files get their error instead of stopping the call; ``prior_shift="em"``
        re-bases the probabilities on the prevalence of these images (see ``evaluate``).
        """
        if not torch.is_tensor(images):
            rows = predict_files(
                self.ckpt,
                [im if isinstance(im, Image.Image) else Path(im) for im in images],
                batch_size=batch_size,
                tta=tta,
                accelerator=self.device.type,
                precision=self.precision,
                prior_shift=prior_shift,
            )
            table = pd.DataFrame(rows, columns=list(PREDICTION_COLUMNS))
            table["probability"] = table["probability"].astype(float)  # None -> NaN
            return table
        probs, _ = adapt_to_prevalence(self.probabilities(images, tta=tta), self.decision,
                                       prior_shift)  # fmt: skip
        positive, negative = self.ckpt.positive_index, 1 - self.ckpt.positive_index
        return pd.DataFrame(
            {
                "file": [f"tensor[{i}]" for i in range(len(probs))],
                "label": "",
                "probability": probs.tolist(),
                "prediction": [
                    self.class_names[positive if p > self.threshold else negative] for p in probs
                ],
                "threshold": self.threshold,
                "error": "",
            }
        )

    def gradcam(self, image: ImageInput) -> tuple[np.ndarray, np.ndarray]:
        """Grad-CAM for PNEUMONIA on one image: the (H, W) map in [0, 1] and an RGB overlay."""
        from pneumonia.explain import gradcam, overlay

        gray = self._load(image)
        heat = gradcam(self.model, self._collate([gray]))[0]
        return heat, overlay(gray, heat)

    def evaluate(
        self,
        folder: str | Path,
        *,
        tta: bool = False,
        prior_shift: str = "none",
        resamples: int = 1000,
        batch_size: int = 64,
    ) -> tuple[dict[str, Any], pd.DataFrame]:
        """Metrics with bootstrap intervals on a labelled folder (``folder/test/<CLASS>/`` or
        ``folder/<CLASS>/``), and the per-image table of ``predictions.csv``."""
        preds = predict_split(
            self.ckpt,
            "test",
            data_overrides={"root": str(folder), "eval_batch_size": batch_size},
            tta=tta,
            accelerator=self.device.type,
            precision=self.precision,
        )
        preds.probs, shift = adapt_to_prevalence(preds.probs, self.decision, prior_shift)
        result = report(preds, self.threshold, resamples=resamples)
        result |= {"decision": self.decision, "prior_shift": shift}
        positive, negative = self.ckpt.positive_index, 1 - self.ckpt.positive_index
        table = pd.DataFrame(
            {
                "file": [str(f) for f in preds.files],
                "label": [self.class_names[positive if t else negative] for t in preds.targets],
                "probability": preds.probs.tolist(),
                "prediction": [
                    self.class_names[positive if p > self.threshold else negative]
                    for p in preds.probs
                ],
                "threshold": self.threshold,
            }
        )
        return result, table


def load(path: str | Path, *, device: str = "auto", precision: str = "auto") -> Classifier:
    """A checkpoint of a ``pneumonia`` training run, ready to predict (safe loading)."""
    return Classifier(load_checkpoint(path), device=device, precision=precision)
