"""Grad-CAM heat maps through pytorch-grad-cam, on the backbone's last convolutional stage, and
overlays drawn on the original image (the model sees a small crop; a reader needs the X-ray)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from pneumonia.data.images import gray_from_image, load_gray
from pneumonia.data.preprocessing import Preprocessing
from pneumonia.models.backbones import cam_layer
from pneumonia.models.checkpoint import LoadedCheckpoint
from pneumonia.models.classifier import PneumoniaClassifier
from pneumonia.system.files import atomic_path

# Overlays larger than this (longest side, pixels) are scaled down: a 2,900 px X-ray PNG per
# image would be large to write and no easier to read.
OVERLAY_MAX_SIDE = 1024


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
    """Blend a heat map onto a uint8 gray image ((H, W) or (1, H, W)) of its size: RGB uint8
    (H, W, 3)."""
    gray = np.asarray(gray.cpu() if torch.is_tensor(gray) else gray)
    gray = gray.reshape(gray.shape[-2:]).astype(np.float32) / 255.0
    rgb = np.repeat(gray[..., None], 3, axis=2)
    return show_cam_on_image(rgb, cam_map, use_rgb=True, image_weight=1 - weight)


def overlay_on_original(
    original: np.ndarray,
    cam_map: np.ndarray,
    preprocessing: Preprocessing,
    *,
    weight: float = 0.4,
    max_side: int = OVERLAY_MAX_SIDE,
) -> np.ndarray:
    """A (crop, crop) heat map drawn where the model looked on the (H, W) uint8 original: RGB
    uint8, at most ``max_side`` pixels on its longest side.

    The crop region (``Preprocessing.crop_box``) carries the map; what the crop cut off is
    shown dimmed, since the model never saw it.
    """
    h, w = original.shape
    scale = min(1.0, max_side / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    gray = original if scale == 1.0 else np.asarray(Image.fromarray(original).resize(size))
    left, top, right, bottom = (round(v * scale) for v in preprocessing.crop_box(w, h))
    left, top = max(0, left), max(0, top)
    right, bottom = min(size[0], right), min(size[1], bottom)
    out = np.repeat((gray.astype(np.float32) * 0.5).astype(np.uint8)[..., None], 3, axis=2)
    if right > left and bottom > top:
        box = (bottom - top, right - left)
        heat = F.interpolate(torch.from_numpy(cam_map)[None, None], size=box, mode="bilinear")
        heat = heat[0, 0].clamp(0, 1).numpy()
        out[top:bottom, left:right] = overlay(gray[top:bottom, left:right], heat, weight)
    return out


def original_gray(item: Path | Image.Image, preprocessing: Preprocessing) -> np.ndarray:
    """The (H, W) uint8 gray image before the resize, as the preprocessing decodes it."""
    if isinstance(item, Image.Image):
        return gray_from_image(item)
    return load_gray(item, preprocessing.max_pixels)


def write_gradcams(
    ckpt: LoadedCheckpoint,
    inputs: Mapping[int, Path | Image.Image],
    images: torch.Tensor,
    out_dir: Path,
    root: Path | None,
) -> dict[int, str]:
    """One PNG per input (by its index among all inputs): its Grad-CAM for PNEUMONIA drawn on
    the original image, named by :func:`gradcam_name`. An overlay that cannot be written does
    not stop the others (nor the predictions): returns input index -> why."""
    out_dir.mkdir(parents=True, exist_ok=True)
    maps = gradcam(ckpt.model, images)
    failed = {}
    for (index, item), cam_map in zip(inputs.items(), maps, strict=True):
        target = out_dir / gradcam_name(item, index, root)
        try:
            original = original_gray(item, ckpt.preprocessing)
            picture = overlay_on_original(original, cam_map, ckpt.preprocessing)
            with atomic_path(target) as tmp:
                Image.fromarray(picture).save(tmp, format="PNG")
        except OSError as e:
            failed[index] = f"Grad-CAM not written to {target}: {e.strerror or e}"
    return failed


# The readable part of a Grad-CAM's name, in bytes: with the hash and suffix, well under the
# 255 bytes a file name may have on Linux and macOS (deep folders made longer ones fail).
NAME_BYTES = 120


def gradcam_name(item: Path | Image.Image, index: int, root: Path | None) -> str:
    """The file name of an input's Grad-CAM, one per input and never another's: its whole path
    below ``root`` (extension included, folders joined by "__"), then a hash of that path
    (``sub__b.png_3f2a9c1e0b_gradcam.png``: ``x.png`` and ``x.jpeg``, or ``sub/b.png`` and
    ``sub__b.png``, no longer share one), its start left out where it is long; ``image_<index>``
    for an image given without a path."""
    if isinstance(item, Image.Image):
        return f"image_{index}_gradcam.png"
    rel = item.relative_to(root) if root is not None and item.is_relative_to(root) else item
    exact = os.fsencode(rel)  # non-UTF-8 names too, byte for byte
    readable = os.fsencode("__".join(p for p in rel.parts if p != "/"))
    if len(readable) > NAME_BYTES:
        readable = readable[-NAME_BYTES:].decode("utf-8", "ignore").encode()  # whole characters
    digest = hashlib.sha1(exact, usedforsecurity=False).hexdigest()[:10]
    return f"{os.fsdecode(readable)}_{digest}_gradcam.png"
