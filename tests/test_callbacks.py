"""Callbacks: unfreezing the backbone at an epoch, the head trained first and the backbone at
its own learning rate (the evaluation figures are tested in test_train.py)."""

from __future__ import annotations

import pytest

import pneumonia.models.classifier as model_module
from pneumonia.train import train

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.mark.parametrize("scheduler", ["onecycle", "cosine", "plateau"])
def test_unfreeze_at_epoch_trains_the_head_first(train_cfg, scheduler: str) -> None:
    cfg = train_cfg(
        "model.freeze_backbone=true",
        "model.unfreeze_at_epoch=1",
        f"model.scheduler={scheduler}",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=2",
        "model.unfreeze_lr_ratio=0.25",
        "test=false",
    )
    counts: list[tuple[int, int]] = []
    lrs: list[list[float]] = []

    class Count(model_module.PneumoniaClassifier):
        def on_train_epoch_start(self) -> None:
            groups = self.optimizers().optimizer.param_groups
            grads = sum(p.numel() for p in self.parameters() if p.requires_grad)
            counts.append((grads, sum(p.numel() for g in groups for p in g["params"])))

        def on_train_batch_end(self, *args) -> None:  # the rates this step used
            lrs.append([g["lr"] for g in self.optimizers().optimizer.param_groups])

    globals()["Count"] = Count
    cfg.model._target_ = f"{__name__}.Count"
    train(cfg)
    head = 512 * 2 + 2
    total = 11_177_538  # resnet18 with a 2-class head
    assert counts[0] == (head, head)
    assert counts[1] == (total, total)
    # the backbone's group runs at unfreeze_lr_ratio times the head's rate, step after step,
    # whatever the schedule does to both
    after = [step for step in lrs if len(step) == 2]
    assert len(after) == 2
    for head_lr, backbone_lr in after:
        assert backbone_lr == pytest.approx(0.25 * head_lr, rel=1e-6)
