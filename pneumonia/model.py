"""The LightningModule: a torchvision backbone with a new head, trained with weighted CE."""

from __future__ import annotations

import logging
from typing import Any, Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from pneumonia.backbones import build_backbone
from pneumonia.callbacks import UnfreezeBackbone
from pneumonia.metrics import (
    EpochPredictions,
    choose_threshold,
    gathered_predictions,
    metrics_at,
    prediction_store,
    ranking_metrics,
    thresholded_metrics,
)
from pneumonia.optim import (
    OPTIMIZERS,
    SCHEDULERS,
    build_optimizer,
    build_scheduler,
    check_schedule_covers_run,
)

log = logging.getLogger(__name__)


class PneumoniaClassifier(pl.LightningModule):
    """Binary chest X-ray classifier (NORMAL vs PNEUMONIA) on a torchvision backbone.

    The PNEUMONIA probability is ``softmax(logits)[:, positive_index]``. The decision threshold
    is a buffer, chosen by ``threshold_rule`` on each validation epoch's predictions, so every
    checkpoint carries the threshold tuned for its own weights.
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
        threshold_rule: str | float = "f1",
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
        choose_threshold(torch.zeros(0), torch.zeros(0), threshold_rule)  # validates the rule
        self.save_hyperparameters(logger=False)
        self.class_names = list(class_names or ["NORMAL", "PNEUMONIA"])
        self.positive_index = self._positive_index(self.class_names)
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
        self.val_outputs = prediction_store()
        self.test_outputs = prediction_store()
        self.epoch_predictions: dict[str, EpochPredictions] = {}
        # Saved in every checkpoint: the eval preprocessing (from the DataModule, as a dict)
        # and the Hydra config of the run.
        self.preprocessing: dict[str, Any] | None = None
        self.run_config: dict[str, Any] | None = None

    def _positive_index(self, classes: list[str]) -> int:
        if self.hparams.positive_class not in classes:
            raise ValueError(
                f"model.positive_class={self.hparams.positive_class!r} is not one of the "
                f"classes {classes}. Set model.positive_class to the class folder that holds "
                "the pneumonia images."
            )
        return classes.index(self.hparams.positive_class)

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
        """Take classes, preprocessing and loss weights from the attached DataModule."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer else None
        if datamodule is None or not hasattr(datamodule, "classes"):
            return
        classes = list(datamodule.classes)
        if self.hparams.class_names is not None and classes != self.class_names:
            raise ValueError(
                f"The data's classes {classes} differ from the model's {self.class_names}."
            )
        self.positive_index = self._positive_index(classes)
        self.class_names = classes
        self.hparams.class_names = classes
        if hasattr(datamodule, "preprocessing"):
            self.preprocessing = datamodule.preprocessing.to_dict()
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

    def on_validation_epoch_end(self) -> None:
        probs, targets = gathered_predictions(self.val_outputs)
        if self.trainer.sanity_checking:
            return
        threshold = choose_threshold(
            probs,
            targets,
            self.hparams.threshold_rule,
            target_sensitivity=self.hparams.target_sensitivity,
        )
        self.threshold.fill_(threshold)
        # Computed from all ranks' gathered predictions: identical on every rank.
        self.log("val/threshold", threshold, sync_dist=True)
        self.log("val/num_samples", float(len(targets)), sync_dist=True)
        self.epoch_predictions["val"] = EpochPredictions(probs, targets, threshold)

    def on_test_epoch_end(self) -> None:
        probs, targets = gathered_predictions(self.test_outputs)
        threshold = float(self.threshold)
        tuned = metrics_at(probs, targets, threshold) if len(targets) else {}
        for name, value in tuned.items():  # from all ranks' gathered predictions
            self.log(f"test/{name}", value, sync_dist=True)
        self.log("test/threshold", threshold, sync_dist=True)
        self.log("test/num_samples", float(len(targets)), sync_dist=True)
        self.epoch_predictions["test"] = EpochPredictions(probs, targets, threshold)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        optimizer = build_optimizer(
            (p for p in self.parameters() if p.requires_grad),
            hp.optimizer,
            lr=hp.lr,
            weight_decay=hp.weight_decay,
            momentum=hp.momentum,
        )
        scheduler = build_scheduler(
            optimizer, hp.scheduler, lambda: int(self.trainer.estimated_stepping_batches)
        )
        if scheduler is None:
            return {"optimizer": optimizer}
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    def on_train_start(self) -> None:
        check_schedule_covers_run(self.trainer)

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["pneumonia"] = {
            "class_names": self.class_names,
            "positive_index": self.positive_index,
            "threshold": float(self.threshold),
            "preprocessing": self.preprocessing,
            "config": self.run_config,
        }
