"""This machine's training and evaluation speed, measured inside a run without a trace
(the time budget's plan, ``pneumonia.models.budget``)."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F  # noqa: N812


def measure_speed(
    trainer: pl.Trainer, module: pl.LightningModule, batches: Iterator[Any], *, repeats: int = 3
) -> tuple[float, float]:
    """(seconds per training batch, seconds per evaluated image), leaving no trace.

    A training batch is timed whole: fetching it (decode, augmentation, collation), forward and
    backward at the trainer's precision, and the optimizer's step, taken at a learning rate of
    0. The optimizers' state, the module's buffers (BatchNorm statistics) and its gradients are
    restored afterwards, so the run goes on as if nothing had been measured.
    """
    optimizers = trainer.optimizers
    saved = [copy.deepcopy(o.state_dict()) for o in optimizers]
    buffers = {name: b.detach().clone() for name, b in module.named_buffers()}
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    last: list[torch.Tensor] = []

    def timed(fn) -> float:
        fn()  # warm-up: first calls allocate
        sync()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        sync()
        return (time.perf_counter() - start) / repeats

    def train_step() -> None:
        images, targets = trainer.strategy.batch_to_device(next(batches))
        with trainer.precision_plugin.forward_context():
            loss = F.cross_entropy(module(images).float(), targets)
        loss.backward()
        for optimizer in optimizers:
            for group in optimizer.param_groups:
                group["lr"] = 0.0
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        last[:] = [images]

    def eval_step() -> None:
        with torch.no_grad(), trainer.precision_plugin.forward_context():
            module(last[0])

    try:
        module.train()
        step_s = timed(train_step)
        module.eval()
        eval_image_s = timed(eval_step) / len(last[0])
    finally:
        module.train()
        module.zero_grad(set_to_none=True)
        for optimizer, state in zip(optimizers, saved, strict=True):
            optimizer.load_state_dict(state)
        with torch.no_grad():
            for name, b in module.named_buffers():
                b.copy_(buffers[name])
    return step_s, eval_image_s
