"""Optimisers and learning-rate schedules, by the names ``model.optimizer`` and
``model.scheduler`` take."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim import lr_scheduler as sched

from pneumonia.errors import InputValueError

OPTIMIZERS: dict[str, type[Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
}


def build_optimizer(
    params: Iterable[torch.nn.Parameter],
    name: str,
    *,
    lr: float,
    weight_decay: float,
    momentum: float,
) -> Optimizer:
    kwargs: dict[str, Any] = {"lr": lr, "weight_decay": weight_decay}
    if name == "sgd":
        kwargs.update(momentum=momentum, nesterov=momentum > 0)
    return OPTIMIZERS[name](params, **kwargs)


# name -> (optimizer, total optimizer steps of the run) -> Lightning's lr_scheduler config.
# The step count is passed as a callable: only per-step schedules need it.
_Builder = Callable[[Optimizer, Callable[[], int]], dict[str, Any]]
SCHEDULERS: dict[str, _Builder | None] = {
    "none": None,
    "cosine": lambda opt, total: {
        "scheduler": sched.CosineAnnealingLR(opt, T_max=max(1, total())),
        "interval": "step",
    },
    "onecycle": lambda opt, total: {
        "scheduler": sched.OneCycleLR(
            opt,
            # a rebuilt schedule (TimeBudget) finds lr at its start value: max_lr is the peak
            max_lr=[g.get("max_lr", g["lr"]) for g in opt.param_groups],
            total_steps=max(2, total()),
            pct_start=0.15,
        ),
        "interval": "step",
    },
    "plateau": lambda opt, total: {
        "scheduler": sched.ReduceLROnPlateau(opt, factor=0.1, patience=2),
        "monitor": "val/loss",
        "interval": "epoch",
    },
}


def build_scheduler(
    optimizer: Optimizer, name: str, total_steps: Callable[[], int]
) -> dict[str, Any] | None:
    """Lightning's ``lr_scheduler`` dict for ``name``, or ``None`` for a constant rate."""
    builder = SCHEDULERS[name]
    return builder(optimizer, total_steps) if builder else None


def check_schedule_covers_run(trainer) -> None:
    """Refuse a resumed OneCycle schedule that is shorter than the run.

    PyTorch would otherwise fail at the first step past the schedule's end, possibly hours in.
    """
    needed = int(trainer.estimated_stepping_batches)
    for config in trainer.lr_scheduler_configs:
        total = getattr(config.scheduler, "total_steps", None)
        if isinstance(config.scheduler, sched.OneCycleLR) and total < needed:
            raise InputValueError(
                f"The checkpoint's OneCycle schedule covers {total} steps but this run needs "
                f"{needed}: a OneCycle run resumes only with its original trainer.max_epochs "
                "(and batch size). Resume with those, or start a new run (for example "
                "model.scheduler=cosine)."
            )


def lightning_optimizers(module) -> dict[str, Any]:
    """``configure_optimizers`` of a module with flat ``optimizer``, ``lr``, ``weight_decay``,
    ``momentum`` and ``scheduler`` hyperparameters: its trainable parameters only."""
    hp = module.hparams
    optimizer = build_optimizer(
        (p for p in module.parameters() if p.requires_grad),
        hp.optimizer,
        lr=hp.lr,
        weight_decay=hp.weight_decay,
        momentum=hp.momentum,
    )
    scheduler = build_scheduler(
        optimizer, hp.scheduler, lambda: int(module.trainer.estimated_stepping_batches)
    )
    return {"optimizer": optimizer} | ({"lr_scheduler": scheduler} if scheduler else {})


def check_names(optimizer: str, scheduler: str) -> None:
    """``model.optimizer`` and ``model.scheduler`` name known ones, or an error lists them."""
    if optimizer not in OPTIMIZERS:
        raise InputValueError(f"model.optimizer={optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
    if scheduler not in SCHEDULERS:
        raise InputValueError(f"model.scheduler={scheduler!r}; valid: {', '.join(SCHEDULERS)}")
