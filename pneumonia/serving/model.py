"""The served checkpoint: uploads decoded as training decodes files, one model thread that
batches concurrent requests, answers shaped as ``predictions.csv`` rows, and the record that
``GET /model`` shows.

Nothing here knows HTTP: :mod:`pneumonia.serving.app` does.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from pneumonia.data.images import load_gray
from pneumonia.decision.predictions import prediction_rows
from pneumonia.models.checkpoint import LoadedCheckpoint, read_checkpoint
from pneumonia.serving.backends import OnnxBackend, TorchBackend

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decoded:
    """One upload, decoded: what the model sees, and the gray original for Grad-CAM."""

    image: torch.Tensor  # uint8 (1, crop, crop), as the evaluation DataLoader gives it
    gray: np.ndarray  # (H, W) uint8, before the resize
    kind: str  # DICOM or the Pillow format


class ServedModel:
    """A checkpoint on a device at a precision, scoring decoded uploads (through its torch
    model, or its ONNX export: ``backend``); Grad-CAM always uses the torch model."""

    def __init__(
        self,
        ckpt: LoadedCheckpoint,
        *,
        device: torch.device,
        precision: str,
        backend: str = "torch",
        export_dir: Path | None = None,
    ) -> None:
        self.ckpt = ckpt
        self.device = device
        self.model = ckpt.model.to(device).eval()
        if backend == "onnx":
            if export_dir is None:
                raise ValueError("the onnx backend needs a folder to export the model into")
            self.network: TorchBackend | OnnxBackend = OnnxBackend(ckpt, device, export_dir)
        else:
            self.network = TorchBackend(ckpt, device, precision)
        self.precision = self.network.precision
        self.record = model_record(ckpt, device=device, precision=self.precision)
        self.record["backend"] = backend

    def decode(self, data: bytes) -> Decoded:
        """The bytes of a PNG, JPEG or DICOM file -> the model's input, by the code that reads
        training files (``images.load_gray``, then the checkpoint's preprocessing).

        Raises:
            BadImageError: empty, not an image, over ``data.max_pixels``, a DICOM without
                pixels, an image the resize would enlarge beyond ``max_upscale``.
        """
        pre = self.ckpt.preprocessing
        gray = load_gray(data, pre.max_pixels)
        kind = "DICOM" if data[128:132] == b"DICM" else _pillow_format(data)
        return Decoded(image=pre.load_gray(gray), gray=gray, kind=kind)

    def score(self, images: list[torch.Tensor]) -> list[dict[str, Any]]:
        """Decoded images -> one answer each, from one forward pass over all of them."""
        batch, _ = self.ckpt.preprocessing.collate([(image, 0) for image in images])
        probs, shifts = self.network(batch)
        return [self.answer(p, None if shifts is None else shifts[i]) for i, p in enumerate(probs)]

    def answer(self, probability: float, shift_score: float | None) -> dict[str, Any]:
        """The JSON of one image: a ``predictions.csv`` row (the same function writes both),
        with the threshold's rule and, where the image is unlike the training images, a
        warning in words."""
        ckpt = self.ckpt
        row = prediction_rows(
            ["upload"],
            [probability],
            threshold=ckpt.threshold,
            class_names=ckpt.class_names,
            positive_index=ckpt.positive_index,
            shift_scores=None if ckpt.shift is None else [shift_score],
            shift_threshold=ckpt.shift.threshold if ckpt.shift else None,
        )[0]
        in_distribution = None if ckpt.shift is None else bool(row["in_distribution"])
        positive = ckpt.class_names[ckpt.positive_index]
        return {
            "probability": probability,
            "prediction": row["prediction"],
            "positive_class": positive,
            "threshold": ckpt.threshold,
            "threshold_rule": str(ckpt.decision.threshold_rule),
            "recalibrated": ckpt.recalibration is not None,
            "shift_score": shift_score,
            "shift_threshold": ckpt.shift.threshold if ckpt.shift else None,
            "in_distribution": in_distribution,
            "warning": shift_warning(in_distribution),
        }

    def gradcam(self, decoded: Decoded) -> dict[str, str]:
        """Grad-CAM for the positive class drawn on the original (``gradcam``), and the
        original as decoded (``image_png``, DICOM windowed): PNG data URIs, at most
        ``OVERLAY_MAX_SIDE`` pixels a side."""
        from pneumonia.inference.explain import OVERLAY_MAX_SIDE, gradcam, overlay_on_original

        pre = self.ckpt.preprocessing
        batch, _ = pre.collate([(decoded.image, 0)])
        heat = gradcam(self.model, batch.to(self.device))[0]
        original = Image.fromarray(decoded.gray)
        original.thumbnail((OVERLAY_MAX_SIDE, OVERLAY_MAX_SIDE))
        return {
            "gradcam": _png_uri(Image.fromarray(overlay_on_original(decoded.gray, heat, pre))),
            "image_png": _png_uri(original),
        }


def _png_uri(picture: Image.Image) -> str:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def shift_warning(in_distribution: bool | None) -> str | None:
    """What a flagged image means, in words; None where it is not flagged (or cannot be)."""
    if in_distribution is None or in_distribution:
        return None
    return (
        "This image is unlike the images the model was trained on (another hospital, device, "
        "view, age group or image processing, or not a chest X-ray). Its probability may be "
        "wrong in either direction: do not rely on it without checking the model on such images."
    )


def _pillow_format(data: bytes) -> str:
    with Image.open(io.BytesIO(data)) as im:
        return str(im.format or "image")


def model_record(ckpt: LoadedCheckpoint, *, device: torch.device, precision: str) -> dict:
    """What ``GET /model`` shows: the classes, what the model was trained on, its validation
    figures, the decision (and its re-fit, if any), the shift threshold, the preprocessing."""
    raw = read_checkpoint(ckpt.path)
    config = ckpt.config or {}
    data = config.get("data") or {}
    monitored = [
        {"monitor": state.get("monitor"), "best": _number(state.get("best_model_score"))}
        for name, state in (raw.get("callbacks") or {}).items()
        if name.startswith("ModelCheckpoint") and state.get("monitor")
    ]
    by_class = ckpt.class_probabilities or {}
    return {
        "checkpoint": ckpt.path.name,
        "classes": ckpt.class_names,
        "positive_class": ckpt.class_names[ckpt.positive_index],
        "backbone": ckpt.model.hparams.backbone,
        "device": device.type,
        "precision": precision,
        "training": {
            "data": data.get("root"),
            "reader": (data.get("table") or {}).get("reader"),
            "epoch": raw.get("epoch"),
            "steps": raw.get("global_step"),
            "seed": config.get("seed"),
        },
        "validation": {
            "images": dict(zip(ckpt.class_names, by_class.get("images", []), strict=False)),
            "checkpoint_chosen_by": monitored[0] if monitored else None,
            "operating_points": ckpt.thresholds or {},
        },
        "decision": {**ckpt.decision.to_dict(), "describe": ckpt.decision.describe()},
        "threshold": ckpt.threshold,
        "shift": ckpt.shift.describe() if ckpt.shift else None,
        "recalibration": ckpt.recalibration,
        "preprocessing": ckpt.preprocessing.describe(),
    }


def _number(value: Any) -> float | None:
    return float(value) if value is not None else None


class Batcher:
    """One thread runs the model. Images that wait for it together go through in one batch
    (up to ``max_batch``; 1: one image per pass), after waiting ``wait_s`` for company; other
    work on the model (Grad-CAM, which hooks it) runs alone, in turn."""

    def __init__(self, served: ServedModel, *, max_batch: int, wait_s: float) -> None:
        self.served = served
        self.max_batch = max(1, int(max_batch))
        self.wait_s = max(0.0, float(wait_s))
        self.batches: list[int] = []  # the size of each batch run, for the load test
        self._jobs: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="pneumonia-model", daemon=True)
        self._thread.start()

    async def score(self, image: torch.Tensor) -> dict[str, Any]:
        return await asyncio.wrap_future(self._put(("score", image)))

    async def call(self, work: Callable[[], Any]) -> Any:
        return await asyncio.wrap_future(self._put(("call", work)))

    def _put(self, job: tuple[str, Any]) -> Future:
        future: Future = Future()
        self._jobs.put((*job, future))
        return future

    def close(self) -> None:
        """Finish the queued work, then stop the thread."""
        self._jobs.put(_STOP)
        self._thread.join()

    def _run(self) -> None:
        held: list[Any] = []  # a job taken while gathering a batch that does not belong in it
        while True:
            job = held.pop() if held else self._jobs.get()
            if job is _STOP:
                return
            kind, payload, future = job
            if kind == "call":
                _settle(future, payload)
                continue
            batch = [(payload, future)]
            while len(batch) < self.max_batch:
                try:
                    nxt = (
                        self._jobs.get(timeout=self.wait_s)
                        if self.wait_s
                        else self._jobs.get_nowait()
                    )
                except queue.Empty:
                    break
                if nxt is _STOP or nxt[0] != "score":
                    held.append(nxt)
                    break
                batch.append((nxt[1], nxt[2]))
            self._score(batch)

    def _score(self, batch: list[tuple[torch.Tensor, Future]]) -> None:
        live = [(image, f) for image, f in batch if f.set_running_or_notify_cancel()]
        if not live:
            return
        self.batches.append(len(live))
        try:
            answers = self.served.score([image for image, _ in live])
        except Exception as e:  # every waiting request gets the error; none hangs
            for _, f in live:
                f.set_exception(e)
            return
        for (_, f), answer in zip(live, answers, strict=True):
            f.set_result(answer)


_STOP = object()


def _settle(future: Future, work: Callable[[], Any]) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        future.set_result(work())
    except Exception as e:
        future.set_exception(e)
