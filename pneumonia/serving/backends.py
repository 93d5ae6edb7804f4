"""What runs the network behind the server: the checkpoint's torch model (``torch``), or its
ONNX export in ONNX Runtime (``onnx``), exported at start from the same checkpoint by
``pneumonia.inference.deployment`` so that both compute the same calibrated probability and
shift score. Each takes a normalised (B, 3, crop, crop) batch and gives (B,) probabilities of
the positive class and (B,) shift scores (None without a shift reference)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from pneumonia.inference.runner import autocast, score_images
from pneumonia.models.checkpoint import LoadedCheckpoint

log = logging.getLogger(__name__)
BACKENDS = ("torch", "onnx")
Scores = tuple[list[float], list[float] | None]


class TorchBackend:
    def __init__(self, ckpt: LoadedCheckpoint, device: torch.device, precision: str) -> None:
        self.ckpt, self.device, self.precision = ckpt, device, precision
        self.model = ckpt.model.to(device).eval()

    def __call__(self, batch: torch.Tensor) -> Scores:
        with autocast(self.device, self.precision):
            probs, shift = score_images(self.model, batch.to(self.device), shift=self.ckpt.shift)
        return probs.float().cpu().tolist(), None if shift is None else shift.float().cpu().tolist()


class OnnxBackend:
    """The checkpoint exported to ``folder``/model.onnx (with its model.json), in ONNX
    Runtime: on CUDA where its CUDA provider is installed and the device is a GPU, else on the
    CPU, in fp32 (the export's precision)."""

    def __init__(self, ckpt: LoadedCheckpoint, device: torch.device, folder: Path) -> None:
        import onnxruntime as ort

        from pneumonia.inference.deployment import export_model

        started = time.perf_counter()
        path, _ = export_model(ckpt, "onnx", folder)
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(path), providers=providers)
        self.positive = ckpt.positive_index
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.precision = "32-true"
        log.info(
            "Exported %s to %s in %.1f s; ONNX Runtime %s on %s",
            ckpt.path.name, path, time.perf_counter() - started, ort.__version__,
            self.session.get_providers()[0],
        )  # fmt: skip

    def __call__(self, batch: torch.Tensor) -> Scores:
        got = self.session.run(self.outputs, {"image": batch.float().numpy()})
        probs = got[0][:, self.positive].astype(float).tolist()
        return probs, got[1].astype(float).tolist() if len(got) > 1 else None
