"""Optimisers and learning-rate schedules, by the names ``model.optimizer`` and
``model.scheduler`` take."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from pytorch_lightning.utilities import rank_zero_info
from torch.optim import Optimizer
from torch.optim import lr_scheduler as sched

from pneumonia.errors import InputValueError

OPTIMIZERS: dict[str, type[Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
}


# How model.lr follows the global batch when model.lr_batch_size names the batch it is for.
LR_SCALINGS = ("auto", "linear", "sqrt")


@dataclass(frozen=True)
class LRScaling:
    """model.lr, given for batches of ``lr_batch_size`` images, scaled to the run's global batch
    (images per optimizer step: the batch size x ranks x accumulated batches).

    ``linear`` multiplies by the ratio (Goyal et al. 2017, for SGD), ``sqrt`` by its square root
    (Malladi et al. 2022, for Adam and AdamW); ``auto`` picks sqrt for adam and adamw and linear
    for sgd, the rule of timm's train.py.
    """

    given: float
    lr_batch_size: int
    global_batch: int
    rule: str
    lr: float
    # A resumed run's optimizer continues at the rate its checkpoint holds, whatever lr says.
    resumed: bool = False

    @classmethod
    def of(
        cls,
        lr: float,
        optimizer: str,
        *,
        lr_batch_size: int,
        global_batch: int,
        scaling: str,
        resumed: bool = False,
    ) -> LRScaling:
        rule = ("linear" if optimizer == "sgd" else "sqrt") if scaling == "auto" else scaling
        ratio = global_batch / lr_batch_size
        factor = ratio if rule == "linear" else math.sqrt(ratio)
        return cls(lr, lr_batch_size, global_batch, rule, lr * factor, resumed)

    def describe(self) -> str:
        said = (
            f"model.lr={self.given:g} is for batches of {self.lr_batch_size}: this run's global "
            f"batch of {self.global_batch} trains at {self.lr:.4g} ({self.rule} scaling)"
        )
        if self.resumed:
            said += "; resumed, the optimizer continues at the rate its checkpoint holds"
        return said

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def global_batch_size(trainer) -> int:
    """Images per optimizer step: the DataModule's batch size on every rank, accumulated."""
    per_rank = getattr(trainer.datamodule, "batch_size", None)
    if not isinstance(per_rank, int):
        raise InputValueError(
            "model.lr_batch_size scales the learning rate to the run's batch size, which only "
            "a DataModule with a batch_size gives (ChestXRayDataModule does): train through "
            "one, or set model.lr_batch_size=null and model.lr to the rate you want."
        )
    return per_rank * trainer.world_size * trainer.accumulate_grad_batches


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
    ``momentum`` and ``scheduler`` hyperparameters (and optionally ``lr_batch_size`` and
    ``lr_scaling``): its trainable parameters only. The scaling, if any, is left in
    ``module.lr_scaled``."""
    hp = module.hparams
    lr = hp.lr
    module.lr_scaled = None
    if hp.get("lr_batch_size"):
        module.lr_scaled = LRScaling.of(
            hp.lr,
            hp.optimizer,
            lr_batch_size=hp.lr_batch_size,
            global_batch=global_batch_size(module.trainer),
            scaling=hp.get("lr_scaling", "auto"),
            resumed=bool(module.trainer.ckpt_path),
        )
        lr = module.lr_scaled.lr
        rank_zero_info(module.lr_scaled.describe())
    optimizer = build_optimizer(
        (p for p in module.parameters() if p.requires_grad),
        hp.optimizer,
        lr=lr,
        weight_decay=hp.weight_decay,
        momentum=hp.momentum,
    )
    scheduler = build_scheduler(
        optimizer, hp.scheduler, lambda: int(module.trainer.estimated_stepping_batches)
    )
    return {"optimizer": optimizer} | ({"lr_scheduler": scheduler} if scheduler else {})


def check_names(optimizer: str, scheduler: str, lr_scaling: str = "auto") -> None:
    """``model.optimizer``, ``model.scheduler`` and ``model.lr_scaling`` name known ones, or an
    error lists them."""
    if lr_scaling not in LR_SCALINGS:
        raise InputValueError(f"model.lr_scaling={lr_scaling!r}; valid: {', '.join(LR_SCALINGS)}")
    if optimizer not in OPTIMIZERS:
        raise InputValueError(f"model.optimizer={optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
    if scheduler not in SCHEDULERS:
        raise InputValueError(f"model.scheduler={scheduler!r}; valid: {', '.join(SCHEDULERS)}")
