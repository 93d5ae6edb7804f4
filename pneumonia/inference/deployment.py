"""What a deployment runs: the network as ONNX or TorchScript, computing the calibrated class
probabilities exactly as ``predict`` does, and beside it a JSON file with everything needed to
reproduce the model's inputs and decision (the checkpoint's preprocessing, every step; class
names; the threshold and the rule, prevalence and temperature behind it)."""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pneumonia.decision.calibration import calibrate, logit_difference
from pneumonia.decision.shift import ShiftReference, energy_score, knn_score, mahalanobis_score
from pneumonia.errors import InputValueError
from pneumonia.models.checkpoint import LoadedCheckpoint
from pneumonia.models.classifier import PneumoniaClassifier
from pneumonia.system.files import atomic_path, write_text

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}


class ExportedClassifier(nn.Module):
    """Normalised float (B, 3, H, W) -> calibrated class probabilities (B, 2), and, for a
    checkpoint with a shift reference, the (B,) shift scores too.

    The positive column is what the model's ``probabilities`` gives, through the same
    functions (``calibration.logit_difference`` and ``calibrate``) and its temperature and
    prevalence, so the stored threshold means the same thing here as in ``predict``; the shift
    score is ``ShiftReference.score``'s (``pneumonia.decision.shift``). (The LightningModule itself
    cannot be traced: TorchScript reads its ``trainer``.)
    """

    def __init__(self, model: PneumoniaClassifier, shift: ShiftReference | None) -> None:
        super().__init__()
        self.backbone = model.backbone
        self.head = model.head
        self.positive_index = int(model.positive_index)
        self.prevalence = float(model.hparams.prevalence)
        self.register_buffer("temperature", model.temperature.detach().clone())
        self.register_buffer("reference_logit", model.reference_logit.detach().clone())
        self.shift_method = shift.method if shift else None
        self.k = shift.k if shift else 0
        for name, tensor in (shift.tensors if shift else {}).items():
            self.register_buffer(f"shift_{name}", tensor.detach().clone())

    def forward(self, images: torch.Tensor):
        features = self.backbone(images)
        logits = self.head(features)
        p = calibrate(
            logit_difference(logits, self.positive_index),
            temperature=self.temperature,
            reference_logit=self.reference_logit,
            prevalence=self.prevalence,
        )
        columns = [1 - p, p] if self.positive_index == 1 else [p, 1 - p]
        probabilities = torch.stack(columns, dim=1)
        if self.shift_method is None:
            return probabilities
        if self.shift_method == "mahalanobis":
            scores = mahalanobis_score(features, self.shift_means, self.shift_precision)
        elif self.shift_method == "knn":
            scores = knn_score(features, self.shift_bank, self.k)
        else:
            scores = energy_score(logits)
        return probabilities, scores


@contextlib.contextmanager
def _quiet(name: str):
    """Keep a library's INFO lines (onnxscript prints a dozen per export) out of the run's log."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def export_model(
    ckpt: LoadedCheckpoint, fmt: str, output_dir: Path, *, opset: int = 18
) -> tuple[Path, Path]:
    """Write ``model.onnx`` or ``model.pt`` and then ``model.json``; return both paths.

    Each file is written beside its destination and renamed over it when whole, the sidecar
    last: a failed export (a full disk) leaves the previous pair as it was.
    """
    if fmt not in FORMATS:
        raise InputValueError(f"format={fmt!r}: use {' or '.join(FORMATS)}")
    pre = ckpt.preprocessing
    net = (
        ExportedClassifier(ckpt.model, ckpt.shift).eval().to(memory_format=torch.contiguous_format)
    )
    outputs = ["probabilities", "shift_score"] if ckpt.shift else ["probabilities"]
    example = torch.randn(2, 3, pre.crop_size, pre.crop_size)
    path = output_dir / f"model{FORMATS[fmt]}"
    with torch.no_grad(), atomic_path(path) as tmp:
        if fmt == "onnx":
            with _quiet("onnxscript"), _quiet("onnx_ir"):
                torch.onnx.export(  # the torch.export-based exporter; the batch size stays free
                    net,
                    (example,),
                    str(tmp),
                    input_names=["image"],
                    output_names=outputs,
                    dynamic_shapes=({0: torch.export.Dim("batch")},),
                    opset_version=opset,
                    dynamo=True,
                    external_data=False,  # one self-contained file (fine below 2 GB)
                    verbose=False,
                )
        else:
            # TorchScript is deprecated upstream but still what many C++ / mobile runtimes load.
            torch.jit.save(torch.jit.trace(net, example), str(tmp))
    sidecar = path.with_suffix(".json")
    write_text(sidecar, json.dumps(metadata(ckpt, path), indent=2) + "\n")
    return path, sidecar


def metadata(ckpt: LoadedCheckpoint, path: Path) -> dict[str, Any]:
    """The sidecar: how to feed the exported network and read its output."""
    positive = ckpt.class_names[ckpt.positive_index]
    pre = ckpt.preprocessing
    return {
        "model_file": path.name,
        "source_checkpoint": str(ckpt.path),
        "backbone": ckpt.model.hparams.backbone,
        "input": {"name": "image", "shape": ["batch", 3, pre.crop_size, pre.crop_size]},
        "output": {"name": "probabilities", "shape": ["batch", len(ckpt.class_names)]},
        **(
            {
                "shift": {
                    **ckpt.shift.describe(),
                    "output": {"name": "shift_score", "shape": ["batch"]},
                    "in_distribution": "shift_score <= threshold",
                }
            }
            if ckpt.shift
            else {}
        ),
        "class_names": ckpt.class_names,
        "positive_class": positive,
        "positive_index": ckpt.positive_index,
        "threshold": ckpt.threshold,
        "decision": f"{positive} when probabilities[:, {ckpt.positive_index}] > threshold",
        "decision_rule": ckpt.decision.to_dict(),
        "preprocessing": pre.describe(),
    }
