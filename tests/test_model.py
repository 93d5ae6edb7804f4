"""The LightningModule's parts: backbones, weights, freezing, thresholds, optimisers."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from torchmetrics.functional.classification import binary_f1_score

from pneumonia.metrics import choose_threshold, confusion_matrix, metrics_at
from pneumonia.model import BACKBONES, PneumoniaClassifier, WeightsUnavailableError


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache; any download attempt fails as it does offline."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError(f"no network in tests ({url})")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return Path(torch.hub.get_dir()) / "checkpoints"


def trainable(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", ["resnet18", "densenet121", "efficientnet_b0"])
def test_backbones_get_a_new_two_class_head(name: str) -> None:
    model = PneumoniaClassifier(backbone=name, weights=None)
    reference = torchvision.models.get_model(name, weights=None)
    classifier = dict(reference.named_modules())[BACKBONES[name].head]
    assert model.head.in_features == classifier.in_features
    assert model.head.out_features == 2
    logits = model(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 2)


def test_unknown_backbone_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"Unknown backbone 'resnet5'.*resnet50"):
        PneumoniaClassifier(backbone="resnet5", weights=None)


def test_pretrained_weights_come_from_the_hub_cache(offline_hub: Path) -> None:
    reference = torchvision.models.resnet18()
    with torch.no_grad():
        reference.conv1.weight.fill_(0.123)
    offline_hub.mkdir(parents=True)
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    torch.save(reference.state_dict(), offline_hub / Path(url).name)
    model = PneumoniaClassifier(backbone="resnet18", weights="IMAGENET1K_V1")
    assert torch.all(model.backbone.conv1.weight == 0.123)


def test_offline_without_cached_weights_names_both_ways_out(offline_hub: Path) -> None:
    with pytest.raises(WeightsUnavailableError) as info:
        PneumoniaClassifier(backbone="resnet18", weights="IMAGENET1K_V1")
    message = str(info.value)
    assert "model.weights=null" in message
    assert "model.weights=/path/to/resnet18.pth" in message
    assert str(offline_hub) in message


def test_weights_from_a_local_state_dict_file(tmp_path: Path) -> None:
    reference = torchvision.models.resnet18()
    with torch.no_grad():
        reference.layer1[0].conv1.weight.fill_(-0.5)
    path = tmp_path / "mine.pth"
    torch.save(reference.state_dict(), path)
    model = PneumoniaClassifier(backbone="resnet18", weights=str(path))
    assert torch.all(model.backbone.layer1[0].conv1.weight == -0.5)


def test_weights_file_for_another_architecture_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "densenet.pth"
    torch.save(torchvision.models.densenet121().state_dict(), path)
    with pytest.raises(WeightsUnavailableError, match="does not fit"):
        PneumoniaClassifier(backbone="resnet18", weights=str(path))


def test_unknown_weights_name_is_an_error() -> None:
    with pytest.raises(WeightsUnavailableError, match=r"IMAGENET1K_V1, IMAGENET1K_V2"):
        PneumoniaClassifier(backbone="resnet50", weights="IMAGENET_V3")


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
        ({"threshold": "median"}, "model.threshold"),
        ({"threshold": 1.5}, "model.threshold"),
    ],
)
def test_bad_model_settings_fail_early(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PneumoniaClassifier(backbone="resnet18", weights=None, **kwargs)


# ----------------------------------------------------------------------------- thresholds
def _scores(n: int = 400, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    targets = (torch.rand(n, generator=g) < 0.6).long()
    probs = (torch.rand(n, generator=g) * 0.7 + 0.3 * targets).clamp(0, 1)
    return probs, targets


GRID = torch.linspace(0, 1, 2001).tolist()


def test_f1_threshold_is_at_least_as_good_as_any_grid_point() -> None:
    probs, targets = _scores()
    t = choose_threshold(probs, targets, "f1")
    best_on_grid = max(binary_f1_score(probs, targets, threshold=x).item() for x in GRID)
    assert metrics_at(probs, targets, t)["f1"] >= best_on_grid - 1e-6


def test_youden_threshold_maximises_sensitivity_plus_specificity() -> None:
    probs, targets = _scores(seed=1)
    t = choose_threshold(probs, targets, "youden")

    def youden(x: float) -> float:
        m = metrics_at(probs, targets, x)
        return m["recall"] + m["specificity"] - 1

    assert youden(t) >= max(youden(x) for x in GRID[::4]) - 1e-6


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95, 1.0])
def test_sensitivity_threshold_reaches_the_target_with_the_best_specificity(target: float) -> None:
    probs, targets = _scores(seed=2)
    t = choose_threshold(probs, targets, "sensitivity", target_sensitivity=target)
    chosen = metrics_at(probs, targets, t)
    assert chosen["recall"] >= target
    reaching = [metrics_at(probs, targets, x) for x in GRID[::4]]
    best_spec = max(m["specificity"] for m in reaching if m["recall"] >= target)
    assert chosen["specificity"] >= best_spec - 1e-6


def test_fixed_threshold_and_single_class_fallback() -> None:
    probs, targets = _scores()
    assert choose_threshold(probs, targets, 0.3) == 0.3
    assert choose_threshold(probs, torch.ones_like(targets), "f1") == 0.5


def test_metrics_agree_with_the_confusion_matrix() -> None:
    probs, targets = _scores(seed=3)
    (tn, fp), (fn, tp) = confusion_matrix(probs, targets, 0.4).tolist()
    m = metrics_at(probs, targets, 0.4)
    assert m["accuracy"] == pytest.approx((tp + tn) / len(targets))
    assert m["recall"] == pytest.approx(tp / (tp + fn))
    assert m["specificity"] == pytest.approx(tn / (tn + fp))
    assert m["precision"] == pytest.approx(tp / (tp + fp))
    assert m["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
