"""The LightningModule: a torchvision backbone with a new head, trained with weighted CE."""

from __future__ import annotations

import logging
import urllib.error
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F  # noqa: N812
import torchvision
from matplotlib import pyplot as plt
from pytorch_lightning.callbacks import BaseFinetuning
from pytorch_lightning.loggers import TensorBoardLogger
from torch import nn
from torchmetrics import CatMetric

from pneumonia.metrics import (
    choose_threshold,
    confusion_matrix,
    metrics_at,
    ranking_metrics,
    thresholded_metrics,
)
from pneumonia.plots import evaluation_figures

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackboneSpec:
    head: str  # attribute path of torchvision's classifier layer
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

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
SCHEDULERS = ("none", "cosine", "onecycle", "plateau")


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could neither be found locally nor downloaded."""


def _split_attr(module: nn.Module, path: str) -> tuple[nn.Module, str]:
    *parents, last = path.split(".")
    for name in parents:
        module = module[int(name)] if name.isdigit() else getattr(module, name)
    return module, last


def _get(module: nn.Module, path: str) -> nn.Module:
    parent, last = _split_attr(module, path)
    return parent[int(last)] if last.isdigit() else getattr(parent, last)


def _set(module: nn.Module, path: str, value: nn.Module) -> None:
    parent, last = _split_attr(module, path)
    if last.isdigit():
        parent[int(last)] = value
    else:
        setattr(parent, last, value)


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
    if name not in BACKBONES:
        raise ValueError(f"Unknown backbone {name!r}. Valid: {', '.join(sorted(BACKBONES))}")
    spec = BACKBONES[name]
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
    head = _get(net, spec.head)
    _set(net, spec.head, nn.Identity())
    return net, head.in_features


class UnfreezeBackbone(BaseFinetuning):
    """Freeze the backbone, then unfreeze it at ``epoch`` with ``lr_ratio`` times the head lr.

    BaseFinetuning records the added parameter group, so a resumed run restores it.
    """

    def __init__(self, epoch: int, lr_ratio: float = 0.1) -> None:
        super().__init__()
        self.epoch = epoch
        self.lr_ratio = lr_ratio

    def freeze_before_training(self, pl_module: PneumoniaClassifier) -> None:
        pl_module.backbone.requires_grad_(False)

    def finetune_function(self, pl_module: PneumoniaClassifier, epoch: int, optimizer) -> None:
        if epoch != self.epoch:
            return
        reference = dict(optimizer.param_groups[0])
        lr = reference["lr"] * self.lr_ratio
        self.unfreeze_and_add_param_group(pl_module.backbone, optimizer, lr=lr)
        group = optimizer.param_groups[-1]
        # Schedulers keep per-group state that a late group lacks (OneCycleLR reads max_lr from
        # every group, ReduceLROnPlateau indexes min_lrs, cosine zips base_lrs): extend it.
        for key in ("initial_lr", "max_lr", "min_lr"):
            if key in reference:
                group[key] = reference[key] * self.lr_ratio
        for key in ("max_momentum", "base_momentum"):
            if key in reference:
                group.setdefault(key, reference[key])
        for config in pl_module.trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if len(getattr(scheduler, "base_lrs", [])) == len(optimizer.param_groups) - 1:
                scheduler.base_lrs.append(group.get("initial_lr", lr))
            if len(getattr(scheduler, "min_lrs", [])) == len(optimizer.param_groups) - 1:
                scheduler.min_lrs.append(scheduler.min_lrs[0])


class PneumoniaClassifier(pl.LightningModule):
    """Binary chest X-ray classifier (NORMAL vs PNEUMONIA) on a torchvision backbone.

    The PNEUMONIA probability is ``softmax(logits)[:, positive_index]``. The decision threshold
    is a buffer, chosen on each validation epoch's predictions, so every checkpoint carries the
    threshold tuned for its own weights.
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        weights: str | None = "IMAGENET1K_V2",
        num_classes: int = 2,
        class_names: list[str] | None = None,
        positive_class: str = "PNEUMONIA",
        freeze_backbone: bool = False,
        unfreeze_at_epoch: int | None = None,
        unfreeze_lr_ratio: float = 0.1,
        class_weights: list[float] | None = None,
        class_weighted: bool = True,
        label_smoothing: float = 0.0,
        optimizer: Literal["adam", "adamw", "sgd"] = "adam",
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        scheduler: Literal["none", "cosine", "onecycle", "plateau"] = "none",
        threshold: str | float = "f1",
        target_sensitivity: float = 0.95,
        channels_last: bool = True,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if num_classes != 2:
            raise ValueError(f"Binary classifier: expects 2 classes, got {num_classes}")
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"model.optimizer={optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
        if scheduler not in SCHEDULERS:
            raise ValueError(f"model.scheduler={scheduler!r}; valid: {', '.join(SCHEDULERS)}")
        choose_threshold(torch.zeros(0), torch.zeros(0), threshold)  # validates the setting
        self.save_hyperparameters(logger=False)
        self.class_names = list(class_names or ["NORMAL", "PNEUMONIA"])
        self.positive_index = (
            self.class_names.index(positive_class) if positive_class in self.class_names else 1
        )
        self.backbone, features = build_backbone(backbone, weights)
        self.head = nn.Linear(features, num_classes)
        if freeze_backbone and unfreeze_at_epoch is None:
            self.backbone.requires_grad_(False)
        # Given, or taken from the DataModule in setup("fit"); stored in every checkpoint.
        weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.register_buffer("class_weights", weight if class_weighted else None)
        self.register_buffer("threshold", torch.tensor(0.5))
        if channels_last:
            self.to(memory_format=torch.channels_last)
        if compile:
            self.backbone.compile()  # in place: state-dict keys stay those of the eager model

        self.train_metrics = thresholded_metrics(0.5).clone(prefix="train/")
        self.train_ranking = ranking_metrics().clone(prefix="train/")
        self.val_metrics = thresholded_metrics(0.5).clone(prefix="val/")
        self.val_ranking = ranking_metrics().clone(prefix="val/")
        self.test_metrics = thresholded_metrics(0.5).clone(prefix="test/", postfix="@0.5")
        self.test_ranking = ranking_metrics().clone(prefix="test/")
        self.val_outputs = nn.ModuleDict({"probs": CatMetric(), "targets": CatMetric()})
        self.test_outputs = nn.ModuleDict({"probs": CatMetric(), "targets": CatMetric()})
        self.last_test: dict[str, Any] = {}
        self.run_config: dict[str, Any] | None = None  # the Hydra config, saved in checkpoints

    # ------------------------------------------------------------------ model
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.head(self.backbone(images))

    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        """PNEUMONIA probability per image."""
        return torch.softmax(self(images).float(), dim=1)[:, self.positive_index]

    def train(self, mode: bool = True) -> PneumoniaClassifier:
        super().train(mode)
        if mode and not any(p.requires_grad for p in self.backbone.parameters()):
            # A frozen backbone is a fixed feature extractor: keep its BatchNorm statistics.
            for m in self.backbone.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def setup(self, stage: str) -> None:
        """Take class names and loss weights from the attached DataModule's training split."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer else None
        if datamodule is None or not hasattr(datamodule, "classes"):
            return
        classes = list(datamodule.classes)
        if self.hparams.class_names is not None and classes != self.class_names:
            raise ValueError(
                f"The data's classes {classes} differ from the model's {self.class_names}."
            )
        self.class_names = classes
        self.hparams.class_names = classes
        if self.hparams.positive_class in classes:
            self.positive_index = classes.index(self.hparams.positive_class)
        if stage == "fit" and self.hparams.class_weighted and self.class_weights is None:
            weights = datamodule.class_weights.float()
            self.class_weights = weights
            self.hparams.class_weights = weights.tolist()
            log.info("Class weights %s for %s", [round(w, 4) for w in weights.tolist()], classes)

    def configure_callbacks(self) -> list[pl.Callback]:
        if self.hparams.freeze_backbone and self.hparams.unfreeze_at_epoch is not None:
            return [
                UnfreezeBackbone(self.hparams.unfreeze_at_epoch, self.hparams.unfreeze_lr_ratio)
            ]
        return []

    # ------------------------------------------------------------------ steps
    def _step(self, batch: tuple[torch.Tensor, torch.Tensor]):
        images, targets = batch
        logits = self(images)
        loss = F.cross_entropy(
            logits.float(),
            targets,
            weight=self.class_weights,
            label_smoothing=self.hparams.label_smoothing,
        )
        probs = torch.softmax(logits.detach().float(), dim=1)[:, self.positive_index]
        binary_targets = (targets == self.positive_index).long()
        return loss, probs, binary_targets

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss, probs, targets = self._step(batch)
        n = len(targets)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n)
        self.train_metrics.update(probs, targets)
        self.train_ranking.update(probs, targets)
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True, batch_size=n)
        self.log_dict(self.train_ranking, on_step=False, on_epoch=True, batch_size=n)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step("val", batch, prog_bar=True)

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step("test", batch, prog_bar=False)

    def _eval_step(self, stage: str, batch, *, prog_bar: bool) -> None:
        """Loss and metrics of one val/test batch; predictions kept for the epoch end."""
        loss, probs, targets = self._step(batch)
        n = len(targets)
        self.log(
            f"{stage}/loss", loss, on_epoch=True, prog_bar=prog_bar, batch_size=n, sync_dist=True
        )
        for collection in (getattr(self, f"{stage}_metrics"), getattr(self, f"{stage}_ranking")):
            collection.update(probs, targets)
            self.log_dict(collection, on_epoch=True, batch_size=n)
        outputs = getattr(self, f"{stage}_outputs")
        outputs["probs"].update(probs)
        outputs["targets"].update(targets)

    @staticmethod
    def _gathered(outputs: nn.ModuleDict) -> tuple[torch.Tensor, torch.Tensor]:
        """All ranks' predictions (CatMetric syncs across processes), then reset."""
        if not outputs["probs"].update_called:
            return torch.zeros(0), torch.zeros(0, dtype=torch.long)
        probs = outputs["probs"].compute().flatten().float().cpu()
        targets = outputs["targets"].compute().flatten().long().cpu()
        outputs["probs"].reset()
        outputs["targets"].reset()
        return probs, targets

    def on_validation_epoch_end(self) -> None:
        probs, targets = self._gathered(self.val_outputs)
        if self.trainer.sanity_checking:
            return
        threshold = choose_threshold(
            probs,
            targets,
            self.hparams.threshold,
            target_sensitivity=self.hparams.target_sensitivity,
        )
        self.threshold.fill_(threshold)
        # Computed from all ranks' gathered predictions: identical on every rank.
        self.log("val/threshold", threshold, sync_dist=True)
        self.log("val/num_samples", float(len(targets)), sync_dist=True)
        if len(targets):
            self._log_figures("val", probs, targets, 0.5)

    def on_test_epoch_end(self) -> None:
        probs, targets = self._gathered(self.test_outputs)
        threshold = float(self.threshold)
        tuned = metrics_at(probs, targets, threshold) if len(targets) else {}
        for name, value in tuned.items():  # from all ranks' gathered predictions
            self.log(f"test/{name}", value, sync_dist=True)
        self.log("test/threshold", threshold, sync_dist=True)
        self.log("test/num_samples", float(len(targets)), sync_dist=True)
        self.last_test = {
            "probs": probs,
            "targets": targets,
            "threshold": threshold,
            "confusion_matrix": confusion_matrix(probs, targets, threshold).tolist(),
        }
        if len(targets):
            self._log_figures("test", probs, targets, threshold)

    def _log_figures(
        self, stage: str, probs: torch.Tensor, targets: torch.Tensor, threshold: float
    ) -> None:
        loggers = [lg for lg in self.loggers if isinstance(lg, TensorBoardLogger)]
        if not loggers or self.global_rank != 0:
            return
        figures = evaluation_figures(
            probs, targets, threshold, self.class_names, f"{stage}, epoch {self.current_epoch}"
        )
        for tb in loggers:
            for name, fig in figures.items():
                tb.experiment.add_figure(
                    f"{stage}/{name}", fig, global_step=self.global_step, close=False
                )
        for fig in figures.values():
            plt.close(fig)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        kwargs: dict[str, Any] = {"lr": hp.lr, "weight_decay": hp.weight_decay}
        if hp.optimizer == "sgd":
            kwargs.update(momentum=hp.momentum, nesterov=hp.momentum > 0)
        optimizer = OPTIMIZERS[hp.optimizer](params, **kwargs)
        if hp.scheduler == "none":
            return {"optimizer": optimizer}
        if hp.scheduler == "plateau":
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, factor=0.1, patience=2
            )
            return {
                "optimizer": optimizer,
                "lr_scheduler": {
                    "scheduler": scheduler,
                    "monitor": "val/loss",
                    "interval": "epoch",
                },
            }
        total = int(self.trainer.estimated_stepping_batches)
        if hp.scheduler == "cosine":
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total))
        else:
            scheduler = torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=hp.lr, total_steps=max(2, total), pct_start=0.15
            )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    # ------------------------------------------------------------------ checkpoints
    def on_train_start(self) -> None:
        """Refuse a resumed OneCycle schedule that is shorter than the run (PyTorch would
        fail at the first step past its end, possibly hours in)."""
        needed = int(self.trainer.estimated_stepping_batches)
        for config in self.trainer.lr_scheduler_configs:
            total = getattr(config.scheduler, "total_steps", None)
            if isinstance(config.scheduler, torch.optim.lr_scheduler.OneCycleLR) and total < needed:
                raise ValueError(
                    f"The checkpoint's OneCycle schedule covers {total} steps but this run needs "
                    f"{needed}: a OneCycle run resumes only with its original trainer.max_epochs "
                    "(and batch size). Resume with those, or start a new run (for example "
                    "model.scheduler=cosine)."
                )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["pneumonia"] = {
            "class_names": self.class_names,
            "positive_index": self.positive_index,
            "threshold": float(self.threshold),
            "config": self.run_config,
        }
