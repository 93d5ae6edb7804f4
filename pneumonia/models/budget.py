"""Time-budgeted runs: fit the epochs and the learning-rate schedule into ``trainer.max_time``.

Lightning's own ``max_time`` stops a run when time is up, wherever it is: a OneCycle or cosine
schedule is then cut off near its peak, and on a slow machine the run may not reach a single
validation. :class:`TimeBudget` measures this machine's training and evaluation speed before the
first optimizer step, plans how many epochs (or steps, when not even one epoch fits) end inside
the budget with the final validation and test, and rebuilds the per-step schedule over exactly
that many steps, so it finishes annealing when the budget ends. The speed can change during a
run (another job on a shared machine, a throttled node): the schedule then follows the clock as
well as the steps, at whichever is further along, and training stops, annealed, when the time
planned for it is up.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Timer

from pneumonia.models.optim import build_scheduler
from pneumonia.models.speed import measure_speed

log = logging.getLogger(__name__)

# The clock a budget reads (a test gives it one that changes speed mid-run).
clock = time.monotonic


@dataclass(frozen=True)
class BudgetPlan:
    """What a time budget resolved to on this machine; ``max_steps`` repeats it exactly."""

    budget_s: float
    spent_s: float  # before training: data scan, cache build, model, measurement
    step_s: float  # one optimizer step (forward, backward, update)
    eval_image_s: float  # one image through the model without gradients
    steps_per_epoch: int
    epochs: int
    max_steps: int
    expected_s: float  # predicted time of the whole run, final validation and test included
    # seconds from the first step that training and its validations may take: the schedule
    # reaches its end by then whatever the speed (None: a plan of an older version, by steps)
    window_s: float | None = None

    def repeat_overrides(self, precision: str) -> str:
        return (
            f"trainer.max_time=null trainer.max_epochs={self.epochs} "
            f"trainer.max_steps={self.max_steps} trainer.precision={precision}"
        )


def plan_budget(
    *,
    budget_s: float,
    spent_s: float,
    step_s: float,
    eval_image_s: float,
    steps_per_epoch: int,
    val_images: int,
    final_images: int,
    max_epochs: int | None,
    margin: float = 0.05,
    epoch_overhead_s: float = 2.0,
) -> BudgetPlan:
    """The most whole epochs (at most ``max_epochs``) that fit, else the most steps of one.

    Args:
        final_images: images evaluated after training (the final validation and the test).
        margin: fraction of the budget held back for what the measurement misses.
        epoch_overhead_s: per-epoch cost besides steps and validation images (checkpoints,
            figures, metrics).
    """
    val_s = val_images * eval_image_s + epoch_overhead_s
    usable = budget_s * (1 - margin) - spent_s - final_images * eval_image_s
    epoch_s = steps_per_epoch * step_s + val_s
    epochs = int(usable // epoch_s) if usable > 0 else 0
    if max_epochs is not None and max_epochs >= 0:
        epochs = min(epochs, max_epochs)
    if epochs >= 1:
        max_steps = epochs * steps_per_epoch
    else:  # not one epoch: stop inside it, validate, and anneal over what fits
        epochs = 1
        max_steps = int(min(max(1, (usable - val_s) // step_s), steps_per_epoch))
    expected = spent_s + max_steps * step_s + epochs * val_s + final_images * eval_image_s
    return BudgetPlan(
        window_s=max(usable, max_steps * step_s + epochs * val_s),
        budget_s=budget_s,
        spent_s=spent_s,
        step_s=step_s,
        eval_image_s=eval_image_s,
        steps_per_epoch=steps_per_epoch,
        epochs=epochs,
        max_steps=max_steps,
        expected_s=expected,
    )


def _validation_images(trainer: pl.Trainer) -> int:
    """Images one validation epoch evaluates (``limit_val_batches`` applied)."""
    loader = trainer.val_dataloaders
    if loader is None and trainer.datamodule is not None:  # no sanity check has set it up
        loader = trainer.datamodule.val_dataloader()
    if loader is None:
        return 0
    batches, limit = len(loader), trainer.limit_val_batches
    batches = min(batches, limit) if isinstance(limit, int) else int(batches * limit)
    return min(len(loader.dataset), batches * (loader.batch_size or 1))


class TimeBudget(pl.Callback):
    """Plan a run with ``trainer.max_time`` so that it ends, annealed and evaluated, in time.

    Does nothing without ``max_time``. The budget counts from this callback's creation, when
    ``train()`` builds the callbacks (after the model, before the data is scanned), so the data
    scan and cache build count too. The plan is logged, kept
    in checkpoints (a resumed run keeps it) and in ``metrics.json`` with the overrides that
    repeat it exactly without a budget.
    """

    def __init__(
        self, margin: float = 0.05, epoch_overhead_s: float = 2.0, check_passes: int = 0
    ) -> None:
        """
        Args:
            check_passes: passes over the validation split after training besides the final
                validation (``pneumonia.evaluation.generalisation``: clean plus each
                degradation); with any, the holdout folder's images count too.
        """
        self.margin = margin
        self.epoch_overhead_s = epoch_overhead_s
        self.check_passes = check_passes
        # pneumonia.decision.shift's reference: one pass over the training and the validation images
        self.reference_pass = False
        self.started = clock()
        self.plan: BudgetPlan | None = None
        self.trained_s = 0.0  # training time before a resume (from the checkpoint)
        self._first_step: float | None = None  # when this process's training began, by clock
        self.clock_from_step: int | None = None  # where the schedule first followed the clock
        self._last_tick: float | None = None  # the clock at the previous step's end
        self._step_s = 0.0  # the latest step's duration, by the clock

    @staticmethod
    def _budget(trainer: pl.Trainer) -> float | None:
        timers = [cb for cb in trainer.callbacks if isinstance(cb, Timer)]
        return timers[0]._duration if timers else None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        budget = self._budget(trainer)
        if budget is None or trainer.fast_dev_run:
            return
        if self.plan is None:  # a resumed run keeps the plan its checkpoint carries
            plan = self._make_plan(trainer, pl_module, budget)
            self.plan = trainer.strategy.broadcast(plan)  # every rank follows rank 0's plan
            self._rebuild_schedules(trainer, pl_module, self.plan.max_steps)
            log.info(
                "Time budget %.0f s: %d epoch(s), %d steps (%.3f s/step, %.4f s/eval image), "
                "expected to end at %.0f s. Repeat exactly with: %s",
                budget,
                self.plan.epochs,
                self.plan.max_steps,
                self.plan.step_s,
                self.plan.eval_image_s,
                self.plan.expected_s,
                self.plan.repeat_overrides(str(trainer.precision)),
            )
        trainer.fit_loop.max_epochs = self.plan.epochs
        trainer.fit_loop.epoch_loop.max_steps = self.plan.max_steps
        self._first_step = clock() - self.trained_s
        self._step_s = self.plan.step_s

    def _make_plan(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, budget: float
    ) -> BudgetPlan:
        # The measuring batch must not move the RNG the real run's shuffling and augmentation
        # draw from, or a repeat with max_steps would see other batches.
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            batches = itertools.cycle(trainer.train_dataloader)  # a tiny epoch comes round again
            batch_s, eval_image_s = measure_speed(trainer, pl_module, batches)
        datamodule = trainer.datamodule
        val_images = _validation_images(trainer)
        test_images = datamodule.num_test_images() if hasattr(datamodule, "num_test_images") else 0
        check_images = self.check_passes * val_images
        if self.reference_pass and hasattr(datamodule, "files"):
            check_images += len(datamodule.files("train")) + val_images
        if self.check_passes and getattr(datamodule, "has_split", lambda _: False)("holdout"):
            check_images += len(datamodule.files("holdout"))
        accumulate = trainer.accumulate_grad_batches
        return plan_budget(
            budget_s=budget,
            spent_s=clock() - self.started,
            step_s=batch_s * accumulate,
            eval_image_s=eval_image_s,
            steps_per_epoch=math.ceil(trainer.num_training_batches / accumulate),
            val_images=val_images,
            final_images=val_images + test_images + check_images,
            max_epochs=trainer.max_epochs,
            margin=self.margin,
            epoch_overhead_s=self.epoch_overhead_s,
        )

    @staticmethod
    def _rebuild_schedules(trainer: pl.Trainer, pl_module: pl.LightningModule, steps: int) -> None:
        """Per-step schedules over exactly ``steps``: no optimizer step has happened yet."""
        name = getattr(pl_module.hparams, "scheduler", None)
        for config in trainer.lr_scheduler_configs:
            if config.interval == "step" and name:
                rebuilt = build_scheduler(config.scheduler.optimizer, name, lambda: steps)
                config.scheduler = rebuilt["scheduler"]

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:  # fmt: skip
        plan = self.plan
        if plan is None or self._first_step is None:
            return
        # Stopping inside the first epoch: should_stop makes Lightning validate before it ends.
        if plan.steps_per_epoch > plan.max_steps <= trainer.global_step:
            trainer.should_stop = True
        if plan.window_s:
            self._follow_the_clock(trainer, plan, first_of_epoch=batch_idx == 0)

    def _follow_the_clock(
        self, trainer: pl.Trainer, plan: BudgetPlan, first_of_epoch: bool
    ) -> None:
        """Keep per-step schedules at least as far along as the time spent, counting the next
        step: steps slower than planned move the schedule by the clock, the last step that fits
        in the window runs at the schedule's end, and training then stops (and validates)."""
        schedulers = [c.scheduler for c in trainer.lr_scheduler_configs if c.interval == "step"]
        if not schedulers:
            return
        if schedulers[0].last_epoch >= plan.max_steps:  # at its end: a OneCycle past it raises
            trainer.should_stop = trainer.should_stop or trainer.global_step < plan.max_steps
            return
        now = clock()
        if self._last_tick is not None and not first_of_epoch:  # not across a validation
            self._step_s = now - self._last_tick
        self._last_tick = now
        spent = now - self._first_step
        next_end = (spent + self._step_s) / plan.window_s  # where the next step will end
        position = min(int(next_end * plan.max_steps), plan.max_steps - 1)
        # A first step's start-up, or a slow validation, leaves a run a step or two behind its
        # clock: it follows the clock once it lags by more than 1% of its steps, then always.
        slack = 0 if self.clock_from_step is not None else max(2, plan.max_steps // 100)
        if schedulers[0].last_epoch + slack >= position:
            return  # on pace: the plan's schedule, by steps
        if spent + 2 * self._step_s > plan.window_s:  # the next step is the last that fits
            position = plan.max_steps - 1
        if self.clock_from_step is None:
            self.clock_from_step = trainer.global_step
            log.warning(
                "Time budget: training runs slower than planned (%d of %d steps after %.0f%% of "
                "the time planned for them; another job on this machine?). The learning-rate "
                "schedule now follows the clock, so it ends annealed when the budget does, in "
                "fewer steps.",
                trainer.global_step, plan.max_steps, 100 * spent / plan.window_s,
            )  # fmt: skip
        for scheduler in schedulers:
            while scheduler.last_epoch < position:
                scheduler.step()
        if position == plan.max_steps - 1:
            log.warning(
                "Time budget: one more step fits in the time planned for training (%d of %d "
                "steps run); it runs at the schedule's end, then the run validates and tests.",
                trainer.global_step, plan.max_steps,
            )  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        trained = clock() - self._first_step if self._first_step is not None else 0.0
        return {"plan": asdict(self.plan) if self.plan else None, "trained_s": trained}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        plan = state_dict.get("plan")
        self.plan = BudgetPlan(**plan) if plan else None
        self.trained_s = float(state_dict.get("trained_s", 0.0))
