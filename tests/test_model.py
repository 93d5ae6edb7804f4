"""The LightningModule: freezing, loss weights, the positive class, bad settings."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from pneumonia.data import ChestXRayDataModule
from pneumonia.models.classifier import PneumoniaClassifier


def trainable(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def test_freeze_backbone_leaves_only_the_head_trainable() -> None:
    model = PneumoniaClassifier(backbone="resnet18", weights=None, freeze_backbone=True)
    head = model.head.in_features * 2 + 2
    assert trainable(model) == head
    assert trainable(model.backbone) == 0
    unfrozen = PneumoniaClassifier(backbone="resnet18", weights=None)
    assert trainable(unfrozen) == sum(p.numel() for p in unfrozen.parameters())


def test_frozen_backbone_keeps_its_batchnorm_statistics() -> None:
    model = PneumoniaClassifier(backbone="resnet18", weights=None, freeze_backbone=True)
    before = model.backbone.bn1.running_mean.clone()
    model.train()
    model(torch.randn(4, 3, 64, 64) * 3 + 1)
    assert torch.equal(model.backbone.bn1.running_mean, before)
    assert model.head.training


def test_channels_last_and_compile_keep_state_dict_keys() -> None:
    eager = PneumoniaClassifier(backbone="resnet18", weights=None, channels_last=False)
    model = PneumoniaClassifier(backbone="resnet18", weights=None, compile=True)
    assert model.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert model.backbone._compiled_call_impl is not None
    assert list(model.state_dict()) == list(eager.state_dict())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"optimizer": "adagrad"}, "model.optimizer"),
        ({"scheduler": "step"}, "model.scheduler"),
        ({"lr_scaling": "cubic"}, r"model.lr_scaling='cubic'; valid: auto, linear, sqrt"),
        ({"threshold_rule": "median"}, "model.threshold_rule"),
        ({"threshold_rule": 1.5}, "model.threshold_rule"),
        (
            {"positive_class": "Pneumonia", "class_names": ["NORMAL", "PNEUMONIA"]},
            r"model\.positive_class='Pneumonia'.*model\.positive_class=PNEUMONIA\.",
        ),
    ],
)
def test_bad_model_settings_fail_early(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PneumoniaClassifier(backbone="resnet18", weights=None, **kwargs)


# ----------------------------------------------------------------------------- the loss
def attach(model: PneumoniaClassifier, datamodule) -> None:
    """What Lightning does before ``setup``: the module sees the trainer's DataModule."""
    model._trainer = SimpleNamespace(datamodule=datamodule)
    model.setup("fit")


def weighted_ce(logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None):
    """Cross-entropy written out: sum_i w_{y_i} * -log p_i(y_i) / sum_i w_{y_i}."""
    nll = -torch.log_softmax(logits.float(), dim=1)[torch.arange(len(targets)), targets]
    w = torch.ones_like(nll) if weight is None else weight[targets]
    return (w * nll).sum() / w.sum()


@pytest.fixture
def datamodule(tiny_root: Path, tmp_path: Path) -> ChestXRayDataModule:
    dm = ChestXRayDataModule(tiny_root, cache_dir=tmp_path, resize_size=40, crop_size=32)
    dm.setup("fit")
    return dm


def test_loss_uses_the_training_splits_class_weights(datamodule: ChestXRayDataModule) -> None:
    torch.manual_seed(0)
    model = PneumoniaClassifier(backbone="resnet18", weights=None).eval()
    attach(model, datamodule)
    torch.testing.assert_close(model.class_weights, datamodule.class_weights)
    assert model.hparams.class_weights == pytest.approx(datamodule.class_weights.tolist())
    assert model.class_weights[0] > 1 > model.class_weights[1]  # NORMAL is the rarer class
    images, targets = next(iter(datamodule.eval_dataloader("train")))
    loss, *_ = model._step((images, targets))
    with torch.no_grad():
        logits = model(images)
    weighted = weighted_ce(logits, targets, datamodule.class_weights)
    assert loss.item() == pytest.approx(weighted.item(), rel=1e-5)
    assert loss.item() != pytest.approx(weighted_ce(logits, targets, None).item(), rel=1e-3)


def test_class_weighted_false_trains_on_the_plain_loss(datamodule: ChestXRayDataModule) -> None:
    model = PneumoniaClassifier(backbone="resnet18", weights=None, class_weighted=False).eval()
    attach(model, datamodule)
    assert model.class_weights is None
    assert "class_weights" not in model.state_dict()
    images, targets = next(iter(datamodule.eval_dataloader("train")))
    loss, *_ = model._step((images, targets))
    with torch.no_grad():
        plain = weighted_ce(model(images), targets, None)
    assert loss.item() == pytest.approx(plain.item(), rel=1e-5)


def test_a_positive_class_at_index_0_is_the_one_scored() -> None:
    model = PneumoniaClassifier(
        backbone="resnet18", weights=None, class_names=["PNEUMONIA", "normal"]
    ).eval()
    assert model.positive_index == 0
    images = torch.randn(6, 3, 32, 32)
    labels = torch.tensor([0, 1, 0, 1, 1, 0])  # indices into ["PNEUMONIA", "normal"]
    _, _, probs, targets = model._step((images, labels))
    with torch.no_grad():
        expected = torch.softmax(model(images), dim=1)[:, 0]
    torch.testing.assert_close(probs, expected)
    torch.testing.assert_close(model.probabilities(images).detach(), expected)
    assert targets.tolist() == [1, 0, 1, 0, 0, 1]  # 1 = PNEUMONIA, whatever its index
