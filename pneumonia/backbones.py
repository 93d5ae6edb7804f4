"""Backbones: the torchvision models this project can train, and their pretrained weights."""

from __future__ import annotations

import urllib.error
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn


@dataclass(frozen=True)
class BackboneSpec:
    head: str  # submodule path of torchvision's classifier layer
    cam_layer: str  # last conv stage, for Grad-CAM


BACKBONES: dict[str, BackboneSpec] = {
    "resnet18": BackboneSpec("fc", "layer4"),
    "resnet34": BackboneSpec("fc", "layer4"),
    "resnet50": BackboneSpec("fc", "layer4"),
    "resnet101": BackboneSpec("fc", "layer4"),
    "densenet121": BackboneSpec("classifier", "features"),
    "efficientnet_b0": BackboneSpec("classifier.1", "features"),
    "efficientnet_b2": BackboneSpec("classifier.1", "features"),
    "convnext_tiny": BackboneSpec("classifier.2", "features"),
    "mobilenet_v3_large": BackboneSpec("classifier.3", "features"),
}


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could neither be found locally nor downloaded."""


def _spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise ValueError(f"Unknown backbone {name!r}. Valid: {', '.join(sorted(BACKBONES))}")
    return BACKBONES[name]


def cam_layer(backbone: nn.Module, name: str) -> nn.Module:
    """The last block of ``backbone``'s final conv stage (ResNet ``layer4[-1]`` and so on)."""
    layer = backbone.get_submodule(_spec(name).cam_layer)
    return layer[-1] if isinstance(layer, nn.Sequential) else layer


def _load_state_dict_file(net: nn.Module, path: Path, head: str) -> None:
    """Load a local state dict (torchvision format) into ``net``, its head excepted."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsUnavailableError(
            f"model.weights={path} is not a readable state dict: {e}"
        ) from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    state = {k: v for k, v in state.items() if not k.startswith(f"{head}.")}
    result = net.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(f"{head}.")]
    if missing or result.unexpected_keys:
        raise WeightsUnavailableError(
            f"model.weights={path} does not fit this backbone: missing {missing[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )


def build_backbone(name: str, weights: str | None) -> tuple[nn.Module, int]:
    """A torchvision model with its classifier replaced by Identity, and its feature count.

    Args:
        weights: a torchvision weights name (``IMAGENET1K_V2``), a path to a local state dict,
            or ``None`` for random initialisation.
    """
    spec = _spec(name)
    enum = torchvision.models.get_model_weights(name)
    if weights is None:
        net = torchvision.models.get_model(name, weights=None)
    elif weights in enum.__members__:
        weights_enum = enum[weights]
        try:
            net = torchvision.models.get_model(name, weights=weights_enum)
        except (urllib.error.URLError, OSError, RuntimeError) as e:
            hub = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights_enum.url).name
            raise WeightsUnavailableError(
                f"Cannot load {name} weights {weights}: not in the torch hub cache ({hub}) and "
                f"the download failed ({type(e).__name__}: {e}). Either train from scratch with "
                f"model.weights=null, or pass a local state-dict file with "
                f"model.weights=/path/to/{name}.pth (or copy {Path(weights_enum.url).name} "
                f"to {hub.parent})."
            ) from e
    elif Path(weights).expanduser().is_file():
        net = torchvision.models.get_model(name, weights=None)
        _load_state_dict_file(net, Path(weights).expanduser(), spec.head)
    else:
        raise WeightsUnavailableError(
            f"model.weights={weights!r} is neither a torchvision weights name for {name} "
            f"({', '.join(enum.__members__)}) nor an existing file. Use model.weights=null for "
            "random initialisation."
        )
    head = net.get_submodule(spec.head)
    parent, _, attr = spec.head.rpartition(".")
    # setattr on a Sequential with the name "1" replaces its item 1: no index arithmetic needed.
    setattr(net.get_submodule(parent), attr, nn.Identity())
    return net, head.in_features
