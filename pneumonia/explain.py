"""Grad-CAM heat maps through pytorch-grad-cam, on the backbone's last convolutional stage."""

from __future__ import annotations

import numpy as np
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from pneumonia.backbones import cam_layer
from pneumonia.model import PneumoniaClassifier


def cam_target_layer(model: PneumoniaClassifier) -> nn.Module:
    """The last block of the backbone's final conv stage (ResNet ``layer4[-1]`` and so on)."""
    return cam_layer(model.backbone, model.hparams.backbone)


def gradcam(model: PneumoniaClassifier, images: torch.Tensor, class_index: int | None = None):
    """(B, 3, H, W) normalised images -> (B, H, W) float maps in [0, 1] for ``class_index``.

    The default class is PNEUMONIA: where the evidence for pneumonia lies.
    """
    target = model.positive_index if class_index is None else class_index
    device = next(model.parameters()).device
    model.eval()
    with GradCAM(model=model, target_layers=[cam_target_layer(model)]) as cam:
        maps = cam(
            input_tensor=images.to(device),
            targets=[ClassifierOutputTarget(target) for _ in range(len(images))],
        )
    return np.asarray(maps, dtype=np.float32)


def overlay(
    gray: np.ndarray | torch.Tensor, cam_map: np.ndarray, weight: float = 0.4
) -> np.ndarray:
    """Blend a heat map onto a uint8 gray image ((H, W) or (1, H, W)): RGB uint8 (H, W, 3)."""
    gray = np.asarray(gray.cpu() if torch.is_tensor(gray) else gray)
    gray = gray.reshape(gray.shape[-2:]).astype(np.float32) / 255.0
    rgb = np.repeat(gray[..., None], 3, axis=2)
    return show_cam_on_image(rgb, cam_map, use_rgb=True, image_weight=1 - weight)
