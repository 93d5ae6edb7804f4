"""The LightningModule: a backbone (torchvision or timm) with a new two-class head, trained with
class-weighted cross-entropy, its probabilities calibrated and its decision stored with it."""

from __future__ import annotations

import logging
from typing import Any, Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F  # noqa: N812
from pytorch_lightning.utilities import rank_zero_warn
from torch import nn

from pneumonia.decision.calibration import calibrate, logit, logit_difference, loss_prevalence
from pneumonia.decision.metrics import (
    gathered_predictions,
    metrics_at,
    prediction_store,
    ranking_metrics,
    thresholded_metrics,
)
from pneumonia.decision.predictions import Predictions, positive_index
from pneumonia.decision.rules import Decision, check_decision, fit_on_validation
from pneumonia.errors import InputValueError
from pneumonia.models.backbones import (
    build_backbone,
    keep_frozen_statistics,
    normalisation_mismatch,
)
from pneumonia.models.callbacks import UnfreezeBackbone
from pneumonia.models.optim import (
    LRScaling,
    check_names,
    check_schedule_covers_run,
    lightning_optimizers,
)

log = logging.getLogger(__name__)

# The layout of a checkpoint's "pneumonia" section (format 1 also copied facts that the
# hyperparameters and buffers hold: class names, threshold, decision).
CHECKPOINT_FORMAT = 2


class PneumoniaClassifier(pl.LightningModule):
    """Binary chest X-ray classifier (NORMAL vs PNEUMONIA).

    An image's score is the logit difference PNEUMONIA - NORMAL; its probability is calibrated
    (``pneumonia.decision.calibration``: a temperature fitted on each validation epoch, the
    prevalence the loss implied shifted to ``prevalence``) and decided at a threshold set by
    ``threshold_rule`` (``pneumonia.decision.rules``). Temperature and threshold are buffers: every
    checkpoint carries them.
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
        lr_batch_size: int | None = None,
        lr_scaling: Literal["auto", "linear", "sqrt"] = "auto",
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        scheduler: Literal["none", "cosine", "onecycle", "plateau"] = "none",
        threshold_rule: str | float = "bayes",
        target_sensitivity: float = 0.95,
        cost_ratio: float = 1.0,
        prevalence: float = 0.5,
        calibrate: bool = True,
        channels_last: bool = True,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if num_classes != 2:
            raise InputValueError(f"Binary classifier: expects 2 classes, got {num_classes}")
        check_names(optimizer, scheduler, lr_scaling)
        check_decision(threshold_rule, target_sensitivity, cost_ratio, prevalence)
        self.save_hyperparameters(logger=False)
        # Provisional until setup() reads the data's class folders (where positive_class is
        # checked) or a checkpoint restores the names.
        self.class_names = list(class_names or ["NORMAL", "PNEUMONIA"])
        provisional = class_names is None and positive_class not in self.class_names
        self.positive_index = 1 if provisional else positive_index(self.class_names, positive_class)
        self.backbone, features = build_backbone(backbone, weights)
        self.head = nn.Linear(features, num_classes)
        if freeze_backbone and unfreeze_at_epoch is None:
            self.backbone.requires_grad_(False)
        # Given, or taken from the DataModule in setup("fit"); stored in every checkpoint.
        weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.register_buffer("class_weights", weight if class_weighted else None)
        self.register_buffer("threshold", torch.tensor(0.5))
        self.register_buffer("temperature", torch.tensor(1.0))
        # Logit of the prevalence the training loss implied (0 = balanced, as class weights make
        # it); set in setup("fit") from the training split.
        self.register_buffer("reference_logit", torch.tensor(0.0))
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
        self.epoch_predictions: dict[str, Predictions] = {}
        # Saved in every checkpoint: the DataModule's eval preprocessing, the run's config.
        self.preprocessing: dict[str, Any] | None = None
        self.run_config: dict[str, Any] | None = None
        # model.lr scaled to the run's global batch (model.lr_batch_size), set by
        # configure_optimizers; None: model.lr as given.
        self.lr_scaled: LRScaling | None = None

    # ------------------------------------------------------------------ model
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised (B, 3, H, W) images -> (B, D) penultimate features
        (``pneumonia.decision.shift``)."""
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.backbone(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))

    def score(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, 2) logits -> (B,) logit differences PNEUMONIA - NORMAL, in float32."""
        return logit_difference(logits, self.positive_index)

    def calibrate(self, scores: torch.Tensor) -> torch.Tensor:
        """Scores -> calibrated PNEUMONIA probabilities, for the model's ``prevalence``."""
        return calibrate(
            scores,
            # Tensors, not floats: no device-to-host sync in every training step on a GPU.
            temperature=self.temperature,
            reference_logit=self.reference_logit,
            prevalence=self.hparams.prevalence,
        )

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised (B, 3, H, W) images -> (B,) calibrated PNEUMONIA probabilities."""
        return self.calibrate(self.score(self(images)))

    def decision(self) -> Decision:
        """How the probability and the threshold were made, for reports and exports."""
        hp = self.hparams
        return Decision(
            threshold_rule=hp.threshold_rule,
            threshold=float(self.threshold),
            cost_ratio=hp.cost_ratio,
            prevalence=hp.prevalence,
            temperature=float(self.temperature),
            reference_prevalence=float(torch.sigmoid(self.reference_logit.double())),
            target_sensitivity=hp.target_sensitivity,
        )

    def train(self, mode: bool = True) -> PneumoniaClassifier:
        super().train(mode)
        if mode:
            keep_frozen_statistics(self.backbone)
        return self

    def setup(self, stage: str) -> None:
        """Take classes, preprocessing and loss weights from the attached DataModule."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer else None
        if datamodule is None or not hasattr(datamodule, "classes"):
            return
        classes = list(datamodule.classes)
        if self.hparams.class_names is not None and classes != self.class_names:
            raise InputValueError(
                f"The data's classes {classes} differ from the model's {self.class_names}."
            )
        self.positive_index = positive_index(classes, self.hparams.positive_class)
        self.class_names = classes
        self.hparams.class_names = classes
        pre = datamodule.preprocessing
        self.preprocessing = pre.to_dict()
        if stage != "fit":
            return
        hp = self.hparams
        if mismatch := normalisation_mismatch(hp.backbone, hp.weights, pre.mean, pre.std):
            rank_zero_warn(mismatch)
        if hp.class_weighted and self.class_weights is None:
            weights = datamodule.class_weights.float()
            self.class_weights = weights
            self.hparams.class_weights = weights.tolist()
            log.info("Class weights %s for %s", [round(w, 4) for w in weights.tolist()], classes)
        counts = datamodule.split_counts("train")
        seen = loss_prevalence(counts, self.class_weights, self.positive_index)
        self.reference_logit.fill_(logit(seen))

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
        scores = self.score(logits.detach())
        binary_targets = (targets == self.positive_index).long()
        return loss, scores, self.calibrate(scores), binary_targets

    def _log_metrics(self, stage: str, probs: torch.Tensor, targets: torch.Tensor) -> None:
        for collection in (getattr(self, f"{stage}_metrics"), getattr(self, f"{stage}_ranking")):
            collection.update(probs, targets)
            self.log_dict(collection, on_step=False, on_epoch=True, batch_size=len(targets))

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss, _, probs, targets = self._step(batch)
        n = len(targets)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n)
        self._log_metrics("train", probs, targets)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step("val", batch, prog_bar=True)

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step("test", batch, prog_bar=False)

    def _eval_step(self, stage: str, batch, *, prog_bar: bool) -> None:
        """Loss and metrics of one val/test batch; predictions kept for the epoch end."""
        loss, scores, probs, targets = self._step(batch)
        n = len(targets)
        self.log(
            f"{stage}/loss", loss, on_epoch=True, prog_bar=prog_bar, batch_size=n, sync_dist=True
        )
        self._log_metrics(stage, probs, targets)
        outputs = getattr(self, f"{stage}_outputs")
        outputs["scores"].update(scores)
        outputs["targets"].update(targets)

    def on_validation_epoch_end(self) -> None:
        scores, targets = gathered_predictions(self.val_outputs)
        if self.trainer.sanity_checking or not len(targets):
            return
        fit = fit_on_validation(
            scores, targets, self.decision(), refit_temperature=self.hparams.calibrate
        )
        self.temperature.fill_(fit.decision.temperature)
        self.threshold.fill_(fit.decision.threshold)
        # Computed from all ranks' gathered predictions: identical on every rank.
        self.log("val/nll", fit.nll, sync_dist=True)
        self.log("val/brier", fit.brier, sync_dist=True)
        self.log("val/temperature", fit.decision.temperature, sync_dist=True)
        self.log("val/threshold", fit.decision.threshold, sync_dist=True)
        self.log("val/num_samples", float(len(targets)), sync_dist=True)
        threshold = fit.decision.threshold
        self.epoch_predictions["val"] = Predictions(fit.probs, targets, threshold, scores=scores)

    def on_test_epoch_end(self) -> None:
        scores, targets = gathered_predictions(self.test_outputs)
        probs = self.calibrate(scores)
        threshold = float(self.threshold)
        tuned = metrics_at(probs, targets, threshold) if len(targets) else {}
        for name, value in tuned.items():  # from all ranks' gathered predictions
            self.log(f"test/{name}", value, sync_dist=True)
        self.log("test/threshold", threshold, sync_dist=True)
        self.log("test/num_samples", float(len(targets)), sync_dist=True)
        self.epoch_predictions["test"] = Predictions(probs, targets, threshold, scores=scores)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> dict[str, Any]:
        return lightning_optimizers(self)

    def on_train_start(self) -> None:
        check_schedule_covers_run(self.trainer)

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Class names, the threshold rule and its parameters are hyperparameters, the
        # threshold and temperature buffers: each is stored once, where Lightning keeps it.
        checkpoint["pneumonia"] = {
            "format": CHECKPOINT_FORMAT,
            "preprocessing": self.preprocessing,
            "config": self.run_config,
        }
