"""Callbacks: unfreezing the backbone at an epoch, the head trained first and the backbone at
its own learning rate; the exponential average of the weights (the evaluation figures are
tested in test_train.py)."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

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


# ----------------------------------------------------------------------------- weight averaging
class _Averaged(pl.LightningModule):
    """A module shaped like the classifier where averaging is concerned: a buffer that its
    setup adds (as the class weights are), a buffer fitted at each validation end on the
    weights just validated (as temperature and threshold are), and BatchNorm statistics."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = torch.nn.BatchNorm1d(4)
        self.layer = torch.nn.Linear(4, 1)
        self.register_buffer("added_in_setup", None)
        self.register_buffer("fitted", torch.tensor(0.0))
        self.outputs: list[torch.Tensor] = []

    def setup(self, stage: str) -> None:
        if self.added_in_setup is None:
            self.added_in_setup = torch.ones(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(self.bn(x)).squeeze(1)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.mse_loss(self(x), y)

    def validation_step(self, batch, batch_idx: int) -> None:
        self.outputs.append(self(batch[0]).detach())

    def on_validation_epoch_end(self) -> None:
        self.fitted.fill_(torch.cat(self.outputs).sum())  # a function of the weights validated
        self.outputs.clear()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.02)


def _loaders():
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 4, generator=g) + 1
    y = x @ torch.tensor([1.0, -2.0, 0.5, 0.0])
    data = TensorDataset(x, y)
    return DataLoader(data, batch_size=8), DataLoader(data, batch_size=16)


def _fit(tmp_path, epochs: int, decay: float, *, resume: str | None = None, record=None):
    from pytorch_lightning.callbacks import ModelCheckpoint

    from pneumonia.models.callbacks import EMAWeights

    torch.manual_seed(0)
    module = _Averaged()
    callbacks = [
        EMAWeights(decay=decay),
        ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", save_top_k=-1, monitor=None),
    ]
    if record is not None:
        callbacks.append(record)
    trainer = pl.Trainer(
        max_epochs=epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=1, deterministic=True,
    )  # fmt: skip
    trainer.callbacks.extend(callbacks)
    train, val = _loaders()
    trainer.fit(module, train, val, ckpt_path=resume, weights_only=False)
    return module


def test_ema_checkpoints_hold_the_average_with_the_decision_fitted_on_it(tmp_path) -> None:
    """Every checkpoint's state_dict is the exponential average of the weights after each step
    (BatchNorm statistics too), its fitted buffer is the one validation fitted on those averaged
    weights, and the raw weights ride along. Lightning's own EMAWeightAveraging fails both the
    buffer that setup adds (it copies the module before the module sets itself up) and the
    fitted buffer (it swaps the average out before the module's validation-end hook)."""
    decay = 0.6
    steps: list[dict[str, torch.Tensor]] = []

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, module, *args) -> None:
            steps.append({k: v.detach().clone() for k, v in module.state_dict().items()})

    _fit(tmp_path, 3, decay, record=Record())
    assert len(steps) == 3 * 4
    for epoch in range(3):
        ckpt = torch.load(tmp_path / f"epoch={epoch}.ckpt", map_location="cpu", weights_only=False)
        seen = steps[: 4 * (epoch + 1)]
        for name in (
            "layer.weight",
            "layer.bias",
            "bn.weight",
            "bn.running_mean",
            "bn.running_var",
        ):
            expected = seen[0][name]
            for w in seen[1:]:
                expected = decay * expected + (1 - decay) * w[name]
            assert torch.allclose(ckpt["state_dict"][name], expected, atol=1e-6), (epoch, name)
            assert torch.equal(ckpt["current_model_state"][name], seen[-1][name])
        assert not torch.equal(ckpt["state_dict"]["layer.weight"], seen[-1]["layer.weight"])
        # the decision buffer is the one fitted on the averaged weights it is stored with
        averaged = _Averaged()
        averaged.added_in_setup = torch.ones(2)
        averaged.load_state_dict(ckpt["state_dict"])
        averaged.eval()
        with torch.no_grad():
            outputs = sum(averaged(x).sum() for x, _ in _loaders()[1])
        assert ckpt["state_dict"]["fitted"].item() == pytest.approx(outputs.item(), rel=1e-5)
        assert ckpt["current_model_state"]["fitted"] == ckpt["state_dict"]["fitted"]


def test_an_ema_run_resumed_from_its_checkpoint_ends_as_one_that_never_stopped(tmp_path) -> None:
    whole = _fit(tmp_path / "whole", 3, 0.6)
    _fit(tmp_path / "part", 2, 0.6)
    resumed = _fit(tmp_path / "resumed", 3, 0.6, resume=str(tmp_path / "part" / "epoch=1.ckpt"))
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name


def test_a_training_run_with_ema_tests_and_stores_the_averaged_weights(train_cfg) -> None:
    """callbacks=[default,ema] as a user types it: the best checkpoint holds the average (the
    raw weights beside it), and what training reports after fit (validation, test, the decision)
    is what evaluate computes from that checkpoint, not from the raw weights."""
    from torchmetrics.functional.classification import binary_auroc

    from pneumonia.evaluation import score
    from pneumonia.models.checkpoint import load_checkpoint

    cfg = train_cfg(
        "callbacks=[default,ema]", "callbacks.ema.decay=0.5", "trainer.max_epochs=3",
        "checks.enabled=false",
    )  # fmt: skip
    metrics = train(cfg)
    raw = torch.load(metrics["best_model_path"], map_location="cpu", weights_only=True)
    assert raw["epoch"] >= 1  # averaged over more than one step
    differ = [
        k for k, v in raw["state_dict"].items() if not torch.equal(v, raw["current_model_state"][k])
    ]
    assert "head.weight" in differ
    ckpt = load_checkpoint(metrics["best_model_path"])
    assert torch.equal(ckpt.model.head.weight.detach(), raw["state_dict"]["head.weight"])
    preds = score(ckpt, "test", device=torch.device("cpu"), precision="32-true")
    auroc = binary_auroc(preds.probs, preds.targets).item()
    assert auroc == pytest.approx(metrics["test/auroc"], abs=1e-5)
    assert float(raw["state_dict"]["temperature"]) == pytest.approx(
        metrics["decision"]["temperature"], rel=1e-5
    )
