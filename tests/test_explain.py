"""Grad-CAM: the right layer, the right class, and a map that is really there."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from pneumonia.inference.explain import cam_target_layer, gradcam, overlay
from pneumonia.models.classifier import PneumoniaClassifier


def reference_cam(model: PneumoniaClassifier, images: torch.Tensor, target: int) -> np.ndarray:
    """Grad-CAM by hand for a ResNet: the gradient of a logit through global average pooling
    and a linear head is the head's weight row, so the map is ReLU(sum_k w_k A_k), min-max
    normalised and bilinearly resized to the input (as pytorch-grad-cam does)."""
    acts = {}
    hook = model.backbone.layer4.register_forward_hook(lambda m, i, out: acts.update(a=out))
    with torch.no_grad():
        model(images)
    hook.remove()
    weight = model.head.weight[target].detach()
    cam = F.relu(torch.einsum("k,bkhw->bhw", weight, acts["a"].float()))

    def normalise(x: torch.Tensor) -> torch.Tensor:
        low = x.amin(dim=(-2, -1), keepdim=True)
        x = x - low
        return x / (1e-7 + x.amax(dim=(-2, -1), keepdim=True))

    up = F.interpolate(normalise(cam)[:, None], size=images.shape[-2:], mode="bilinear")
    return normalise(up[:, 0]).numpy()


@pytest.mark.parametrize("target", [None, 0])
def test_gradcam_is_the_class_activation_map_of_the_last_stage(target: int | None) -> None:
    torch.manual_seed(0)
    model = PneumoniaClassifier(backbone="resnet18", weights=None).eval()
    assert cam_target_layer(model) is model.backbone.layer4[-1]
    images = torch.randn(2, 3, 128, 128)  # a 4x4 map at layer4: Grad-CAM needs more than 1x1
    maps = gradcam(model, images, class_index=target)
    expected = reference_cam(model, images, model.positive_index if target is None else target)
    assert maps.shape == (2, 128, 128)
    np.testing.assert_allclose(maps, expected, atol=2e-3)
    for m in maps:  # a real map: spans [0, 1], not a constant (an all-zero map fails here)
        assert m.max() == pytest.approx(1.0, abs=1e-3)
        assert m.min() == pytest.approx(0.0, abs=1e-3)


def test_gradcam_maps_of_the_two_classes_differ() -> None:
    torch.manual_seed(1)
    model = PneumoniaClassifier(backbone="resnet18", weights=None).eval()
    images = torch.randn(1, 3, 128, 128)
    assert not np.allclose(gradcam(model, images, 0), gradcam(model, images, 1), atol=0.05)


def test_overlay_blends_the_map_onto_the_image() -> None:
    gray = np.full((1, 8, 8), 100, dtype=np.uint8)
    cam = np.zeros((8, 8), dtype=np.float32)
    cam[:4] = 1.0
    rgb = overlay(gray, cam, weight=0.5)
    assert rgb.shape == (8, 8, 3)
    assert rgb.dtype == np.uint8
    assert not np.array_equal(rgb[0, 0], rgb[7, 7])  # hot and cold halves look different
