"""Time budgets: the plan for a machine, and a run that ends annealed and validated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pneumonia.models.budget import plan_budget
from pneumonia.train import train

from .conftest import compose_train_cfg

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

# A Kermany-sized run: 148 steps of 32 images per epoch, 523 validation and 624 test images.
KERMANY = {"steps_per_epoch": 148, "val_images": 523, "final_images": 523 + 624}


def test_a_fast_machine_gets_every_epoch_the_recipe_asks_for() -> None:
    plan = plan_budget(
        budget_s=1800, spent_s=10, step_s=0.3, eval_image_s=0.003, max_epochs=22, **KERMANY
    )
    assert (plan.epochs, plan.max_steps) == (22, 22 * 148)
    assert plan.expected_s < 1800


def test_a_slower_machine_gets_fewer_whole_epochs_that_end_in_time() -> None:
    fast = plan_budget(
        budget_s=1800, spent_s=10, step_s=0.5, eval_image_s=0.005, max_epochs=22, **KERMANY
    )
    slow = plan_budget(
        budget_s=1800, spent_s=10, step_s=1.2, eval_image_s=0.012, max_epochs=22, **KERMANY
    )
    assert 1 <= slow.epochs < fast.epochs <= 22
    for plan in (fast, slow):
        assert plan.max_steps == plan.epochs * 148  # the schedule spans whole epochs
        assert plan.expected_s <= 1800 * 0.95  # inside the budget, margin kept
        one_more = plan.expected_s + 148 * plan.step_s + 523 * plan.eval_image_s + 2.0
        assert one_more > 1800 * 0.95 or plan.epochs == 22  # and no epoch left unused


def test_a_machine_too_slow_for_one_epoch_stops_inside_it() -> None:
    plan = plan_budget(
        budget_s=600, spent_s=30, step_s=5.0, eval_image_s=0.05, max_epochs=22, **KERMANY
    )
    assert plan.epochs == 1
    assert 1 <= plan.max_steps < 148
    assert plan.expected_s <= 600 * 0.95


def read_scalars(run: Path, tag: str) -> list[float]:
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    return [e.value for e in acc.Scalars(tag)]


@pytest.fixture
def a_slow_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine's measured speed, faked: 3 s a training step, 50 ms an evaluated image.

    A plan from a real measurement depends on the machine and on what else runs on it; this
    one gives every machine a few epochs (3-6) of a budget of a minute or less, which its real
    steps (tiny images) then run in seconds.
    """
    import pneumonia.models.budget as budget_module

    monkeypatch.setattr(budget_module, "measure_speed", lambda *a, **k: (3.0, 0.05))


@pytest.mark.slow
def test_a_budgeted_demo_run_anneals_fully_and_validates(train_cfg, a_slow_machine) -> None:
    cfg = train_cfg(
        "trainer.max_time=00:00:01:00",
        "trainer.max_epochs=1000",  # the budget, not the epoch count, ends this run
        "callbacks.lr_monitor.logging_interval=step",
        "test=false",
    )
    assert cfg.model.scheduler == "onecycle"
    metrics = train(cfg)
    run = Path(cfg.paths.output_dir)
    plan = json.loads((run / "metrics.json").read_text())["time_budget"]
    assert 1 <= plan["epochs"] < 1000
    assert plan["max_steps"] == plan["epochs"] * plan["steps_per_epoch"]
    assert f"trainer.max_steps={plan['max_steps']}" in plan["repeat_with"]
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == plan["max_steps"]  # every planned step ran
    assert last["lr_schedulers"][0]["total_steps"] == plan["max_steps"]  # the schedule fits
    lrs = read_scalars(run, "lr-AdamW")  # the rate of every step
    assert len(lrs) == plan["max_steps"]
    assert max(lrs) == pytest.approx(cfg.model.lr, rel=0.05)  # OneCycle reached its peak
    assert lrs[-1] < 1e-4 * max(lrs)  # and the last step ran at the annealed end
    assert metrics["val/num_samples"] > 0
    assert len(read_scalars(run, "val/loss")) >= plan["epochs"]  # a validation every epoch


def test_a_budget_shorter_than_one_epoch_stops_inside_it_validated(
    train_cfg, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pneumonia.models.budget as budget_module

    # This machine, as slow as a big model on a small CPU: 20 s a step, 3 steps an epoch.
    monkeypatch.setattr(budget_module, "measure_speed", lambda *a, **k: (20.0, 0.01))
    cfg = train_cfg(
        "trainer.max_time=00:00:01:00",
        "trainer.max_epochs=5",
        "trainer.num_sanity_val_steps=0",
        "callbacks.lr_monitor.logging_interval=step",
        "test=false",
    )
    train(cfg)
    run = Path(cfg.paths.output_dir)
    plan = json.loads((run / "metrics.json").read_text())["time_budget"]
    assert (plan["epochs"], plan["steps_per_epoch"]) == (1, 3)
    assert 1 <= plan["max_steps"] < 3
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == plan["max_steps"]
    lrs = read_scalars(run, "lr-AdamW")
    assert len(lrs) == plan["max_steps"]
    assert lrs[-1] < 1e-4 * cfg.model.lr
    # validated before stopping: the fit's validation, then the best checkpoint's again
    assert len(read_scalars(run, "val/loss")) == 2


def test_the_checks_after_training_count_against_the_budget(
    tmp_path: Path, tiny_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pneumonia.models.budget as budget_module

    # 3 s a step and 0.5 s an evaluated image: seven more passes over validation cost epochs.
    monkeypatch.setattr(budget_module, "measure_speed", lambda *a, **k: (3.0, 0.5))
    plans = {}
    for enabled in (False, True):
        cfg = compose_train_cfg(
            tmp_path / str(enabled),
            tiny_root,
            "trainer.max_time=00:00:01:30",
            "trainer.max_epochs=20",
            "trainer.num_sanity_val_steps=0",
            "test=false",
            f"checks.enabled={enabled}",
        )
        train(cfg)
        metrics = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
        plans[enabled] = metrics["time_budget"]
        assert ("checks" in metrics) == enabled
    assert plans[True]["max_steps"] < plans[False]["max_steps"]
    assert all(p["expected_s"] <= p["budget_s"] for p in plans.values()), plans


@pytest.mark.slow
def test_the_recorded_overrides_repeat_a_budgeted_run_exactly(
    tmp_path: Path, tiny_root: Path, a_slow_machine
):
    common = ["trainer.max_epochs=1000", "test=false", "checks.enabled=false"]
    budgeted = compose_train_cfg(tmp_path / "a", tiny_root, "trainer.max_time=00:00:00:40", *common)
    plan = train(budgeted)["time_budget"]
    overrides = plan["repeat_with"].split()
    assert "trainer.max_time=null" in overrides
    repeat = compose_train_cfg(tmp_path / "b", tiny_root, *common, *overrides)
    assert train(repeat).get("time_budget") is None  # no budget, no measuring

    def last(cfg) -> dict:
        path = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
        return torch.load(path, map_location="cpu", weights_only=True)

    a, b = last(budgeted), last(repeat)
    assert a["global_step"] == b["global_step"] == plan["max_steps"]
    # measuring the machine changed nothing: not the weights, the optimizer or the schedule
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(value, b["state_dict"][key], rtol=0, atol=0, msg=key)
    assert a["lr_schedulers"] == b["lr_schedulers"]
    state_a, state_b = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    for i in state_a:
        torch.testing.assert_close(state_a[i]["exp_avg"], state_b[i]["exp_avg"], rtol=0, atol=0)


class Clock:
    """A clock the test moves: each training step takes ``step_s`` of it until ``slow_after``
    steps, then ``factor`` times as long (another job took the cores, a node throttled); the
    first step twice as long (the loader's start-up), which alone is no reason to follow it."""

    def __init__(self, step_s: float, slow_after: int, factor: float) -> None:
        self.now, self.step_s, self.slow_after, self.factor = 0.0, step_s, slow_after, factor

    def __call__(self) -> float:
        return self.now

    def tick(self, step: int) -> None:
        self.now += self.step_s * (self.factor if step > self.slow_after else 1.0)
        self.now += self.step_s if step == 1 else 0.0


def test_the_schedule_anneals_by_the_deadline_when_steps_slow_down_mid_run(
    train_cfg, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real tiny run whose steps slow 3x mid-run (faster steps, and the schedule at every
    speed from 0.7x to 2x: test_a_schedule_that_follows_the_clock_never_steps_past_its_end)."""
    factor = 3.0
    import pneumonia.models.budget as budget_module
    from pneumonia.models.budget import TimeBudget

    clock = Clock(step_s=3.0, slow_after=4, factor=factor)
    monkeypatch.setattr(budget_module, "measure_speed", lambda *a, **k: (3.0, 0.01))
    monkeypatch.setattr(budget_module, "clock", clock)
    ends: list[float] = []
    original = TimeBudget.on_train_batch_end

    def a_step_takes_the_clocks_time(self, trainer, *args):
        clock.tick(trainer.global_step)
        original(self, trainer, *args)
        ends.append(clock.now)

    monkeypatch.setattr(TimeBudget, "on_train_batch_end", a_step_takes_the_clocks_time)
    cfg = train_cfg(
        "trainer.max_time=00:00:01:30",
        "trainer.max_epochs=1000",
        "trainer.num_sanity_val_steps=0",
        "callbacks.lr_monitor.logging_interval=step",
        "test=false",
        "checks.enabled=false",
        "shift.enabled=false",
    )
    metrics = train(cfg)
    plan = metrics["time_budget"]
    run = Path(cfg.paths.output_dir)
    lrs = read_scalars(run, "lr-AdamW")
    assert max(lrs) == pytest.approx(cfg.model.lr, rel=0.05)  # the peak was reached
    assert lrs[-1] < 1e-3 * max(lrs)  # and the last step ran at the annealed end
    assert ends[-1] <= plan["window_s"] + 3.0 * factor  # training ended by its deadline
    assert plan["steps_run"] < plan["max_steps"]  # fewer steps, the schedule by the clock
    assert plan["followed_clock_from_step"] > 1  # not from the first step's start-up


@pytest.mark.parametrize("step_s", [0.7, 1.0, 1.01, 1.05, 1.3, 2.0])
def test_a_schedule_that_follows_the_clock_never_steps_past_its_end(
    monkeypatch: pytest.MonkeyPatch, step_s: float
) -> None:
    """Lightning steps the schedule after every optimizer step; the budget moves it on by the
    clock. A run 5% slower than planned once reached the schedule's end before its last
    planned step, and OneCycle raised at the next one, losing the run's last epoch."""
    from types import SimpleNamespace

    import pneumonia.models.budget as budget_module
    from pneumonia.models.budget import BudgetPlan, TimeBudget

    now = [0.0]
    monkeypatch.setattr(budget_module, "clock", lambda: now[0])
    budget = TimeBudget()
    budget.plan = BudgetPlan(budget_s=200.0, spent_s=0.0, step_s=1.0, eval_image_s=0.0,
                             steps_per_epoch=200, epochs=1, max_steps=200, expected_s=200.0,
                             window_s=200.0)  # fmt: skip
    budget._first_step, budget._step_s = 0.0, 1.0
    optimizer = torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=1.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1.0, total_steps=200)
    configs = [SimpleNamespace(interval="step", scheduler=schedule)]
    trainer = SimpleNamespace(should_stop=False, global_step=0, lr_scheduler_configs=configs)
    while not trainer.should_stop and trainer.global_step < 200:  # Lightning's loop, in short
        optimizer.step()
        schedule.step()  # raises past the schedule's end
        trainer.global_step += 1
        now[0] += step_s
        budget.on_train_batch_end(trainer, None, None, None, batch_idx=trainer.global_step)
    assert schedule.last_epoch == 200  # ended at the schedule's end, annealed
    # by the deadline, give or take the last step and the 1% lag a run has before it follows
    assert now[0] <= 200.0 * 1.01 + 2 * step_s
    if step_s <= 1.0:
        assert trainer.global_step == 200  # on pace or faster: every planned step
    if step_s >= 1.05:
        assert trainer.global_step < 200  # slower: fewer steps, the schedule by the clock
