"""``python -m pneumonia.export ckpt_path=... format=onnx|torchscript``.

Writes the network (normalised image in, calibrated class probabilities out, exactly as
``predict`` computes them) and, beside it, a JSON file with everything a deployment needs to
reproduce the model's inputs and decision: the checkpoint's preprocessing (every step: gray
conversion, resize with its interpolation, crop, mean/std), class names, the threshold and the
rule, prevalence and temperature behind it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig
from torch import nn

from pneumonia.calibration import logit
from pneumonia.checkpoint import LoadedCheckpoint, load_checkpoint
from pneumonia.config import CONFIG_DIR
from pneumonia.files import write_text

log = logging.getLogger(__name__)
FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}


class ExportedClassifier(nn.Module):
    """Normalised float (B, 3, H, W) -> calibrated class probabilities (B, 2).

    The positive column is the model's ``predict_proba`` (temperature and prevalence applied),
    so the stored threshold means the same thing here as in ``predict``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.backbone = model.backbone
        self.head = model.head
        self.positive_index = int(model.positive_index)
        shift = logit(float(model.hparams.prevalence)) - float(model.reference_logit)
        self.register_buffer("scale", torch.tensor(1.0 / float(model.temperature)))
        self.register_buffer("shift", torch.tensor(shift))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.backbone(images))
        score = logits[:, self.positive_index] - logits[:, 1 - self.positive_index]
        p = torch.sigmoid(score * self.scale + self.shift)
        columns = [1 - p, p] if self.positive_index == 1 else [p, 1 - p]
        return torch.stack(columns, dim=1)


def export_model(
    ckpt: LoadedCheckpoint, fmt: str, output_dir: Path, *, opset: int = 18
) -> tuple[Path, Path]:
    """Write ``model.onnx`` or ``model.pt`` and ``model.json``; return both paths."""
    if fmt not in FORMATS:
        raise ValueError(f"format={fmt!r}: use {' or '.join(FORMATS)}")
    pre = ckpt.preprocessing
    net = ExportedClassifier(ckpt.model).eval().to(memory_format=torch.contiguous_format)
    example = torch.randn(2, 3, pre.crop_size, pre.crop_size)
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / f"model{FORMATS[fmt]}"
    with torch.no_grad():
        if fmt == "onnx":
            torch.onnx.export(  # the torch.export-based exporter; the batch size stays free
                net,
                (example,),
                str(path),
                input_names=["image"],
                output_names=["probabilities"],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                opset_version=opset,
                dynamo=True,
                external_data=False,  # one self-contained file (fine below 2 GB)
                verbose=False,
            )
        else:
            # TorchScript is deprecated upstream but still what many C++ / mobile runtimes load.
            torch.jit.save(torch.jit.trace(net, example), str(path))
    meta = metadata(ckpt, path)
    sidecar = path.with_suffix(".json")
    write_text(sidecar, json.dumps(meta, indent=2) + "\n")
    return path, sidecar


def metadata(ckpt: LoadedCheckpoint, path: Path) -> dict[str, Any]:
    positive = ckpt.class_names[ckpt.positive_index]
    pre = ckpt.preprocessing
    return {
        "model_file": path.name,
        "source_checkpoint": str(ckpt.path),
        "backbone": ckpt.model.hparams.backbone,
        "input": {"name": "image", "shape": ["batch", 3, pre.crop_size, pre.crop_size]},
        "output": {"name": "probabilities", "shape": ["batch", len(ckpt.class_names)]},
        "class_names": ckpt.class_names,
        "positive_class": positive,
        "positive_index": ckpt.positive_index,
        "threshold": ckpt.threshold,
        "decision": f"{positive} when probabilities[:, {ckpt.positive_index}] > threshold",
        "decision_rule": ckpt.decision,
        "preprocessing": pre.describe(),
    }


def export(cfg: DictConfig) -> Path:
    ckpt = load_checkpoint(cfg.ckpt_path)
    path, sidecar = export_model(ckpt, cfg.format, Path(cfg.output_dir), opset=cfg.opset)
    log.info("Exported %s and %s", path, sidecar)
    return path


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="export")
def main(cfg: DictConfig) -> None:
    export(cfg)


if __name__ == "__main__":
    main()
