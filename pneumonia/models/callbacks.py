"""Lightning callbacks of this project (the standard ones come from Lightning itself).

Plotting is imported inside the hooks that draw, so that loading a model for inference never
loads matplotlib.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BaseFinetuning, EMAWeightAveraging
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.trainer.states import TrainerFn
from torchvision.utils import make_grid


def _tensorboards(trainer: pl.Trainer) -> list[TensorBoardLogger]:
    return [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]


class UnfreezeBackbone(BaseFinetuning):
    """Freeze the backbone, then unfreeze it at ``epoch`` with ``lr_ratio`` times the head lr.

    BaseFinetuning records the added parameter group, so a resumed run restores it.
    """

    def __init__(self, epoch: int, lr_ratio: float = 0.1) -> None:
        super().__init__()
        self.epoch = epoch
        self.lr_ratio = lr_ratio

    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        pl_module.backbone.requires_grad_(False)

    def finetune_function(self, pl_module: pl.LightningModule, epoch: int, optimizer) -> None:
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


class EMAWeights(EMAWeightAveraging):
    """Lightning's exponential moving average of the weights, fitted to this module.

    Two things differ from ``EMAWeightAveraging``, both about the module's own buffers:

    - The average is made when fit starts (or when a resumed run loads its checkpoint), not in
      ``setup``: Lightning sets callbacks up before the module, and the module's setup adds
      buffers (the class weights from the data), which an earlier copy would lack.
    - The validation epoch fits the decision (temperature, threshold) in the module's
      ``on_validation_epoch_end``, which Lightning calls after the callbacks' hook. So the
      average is swapped out at ``on_validation_end`` instead, still before the checkpoints
      are saved (Lightning calls checkpoint callbacks last), and the module's own buffers
      fitted there are given to the raw weights too: every checkpoint's state_dict holds the
      averaged weights with the decision fitted on their validation scores, and the average
      never drifts towards a stale decision.
    """

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        pass  # the module has not set itself up yet: see _make_average

    def _make_average(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._average_model is None:
            super().setup(trainer, pl_module, "fit")

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._make_average(trainer, pl_module)

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if trainer.state.fn == TrainerFn.FITTING:  # a resumed run: restored before fit starts
            self._make_average(trainer, pl_module)
        super().on_load_checkpoint(trainer, pl_module, checkpoint)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pass  # the module fits its decision after this hook: swap back in on_validation_end

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._average_model is None:
            return
        fitted = {n: b.detach().clone() for n, b in pl_module.named_buffers(recurse=False)}
        self._swap_models(pl_module)
        with torch.no_grad():
            for name, buffer in pl_module.named_buffers(recurse=False):
                buffer.copy_(fitted[name])


class EvaluationFigures(pl.Callback):
    """Log the confusion matrix, ROC curve and reliability diagram of every validation and test
    epoch to TensorBoard, with the operating points (sensitivity at specificity >= 90% and 95%,
    and the reverse) as scalars.

    Reads the epoch's :class:`~pneumonia.decision.predictions.Predictions` that the module
    gathered over all ranks (``pl_module.epoch_predictions``); the hooks run after the module's
    epoch end.
    """

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._log(trainer, pl_module, "val")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(trainer, pl_module, "test")

    @staticmethod
    def _log(trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        predictions = pl_module.epoch_predictions.get(stage)
        loggers = _tensorboards(trainer)
        if not loggers or trainer.global_rank != 0 or predictions is None:
            return
        if not len(predictions.targets):
            return
        from matplotlib import pyplot as plt

        from pneumonia.reports.plots import evaluation_figures

        # Validation figures at 0.5; test figures at the stored threshold, as test/* reports.
        threshold = predictions.threshold if stage == "test" else 0.5
        figures = evaluation_figures(
            predictions.probs,
            predictions.targets,
            threshold,
            pl_module.class_names,
            f"{stage}, epoch {trainer.current_epoch}",
        )
        points = {}
        both = 0 < int(predictions.targets.sum()) < len(predictions.targets)
        if both:  # the reliability diagram and the operating points need both classes
            from pneumonia.decision.calibration import reliability
            from pneumonia.decision.metrics import operating_point_metrics
            from pneumonia.reports.plots import reliability_figure

            probs, targets = predictions.probs.float(), predictions.targets.long()
            figures["reliability"] = reliability_figure(
                reliability(probs, targets), f"{stage}, epoch {trainer.current_epoch}"
            )
            points = {
                k: float(v) for k, v in operating_point_metrics(0.5, None)(probs, targets).items()
            }
        for tb in loggers:
            for name, fig in figures.items():
                tb.experiment.add_figure(
                    f"{stage}/{name}", fig, global_step=trainer.global_step, close=False
                )
            for name, value in points.items():
                tb.experiment.add_scalar(f"{stage}/{name}", value, global_step=trainer.global_step)
        for fig in figures.values():
            plt.close(fig)


class SampleGrid(pl.Callback):
    """Log a grid of augmented training images to TensorBoard once, at the first batch.

    Shows what the model really sees after augmentation, with normalisation undone.
    """

    def __init__(self, max_images: int = 16) -> None:
        self.max_images = max_images
        self._done = False

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module, batch, batch_idx: int) -> None:
        if self._done or trainer.global_rank != 0:
            return
        self._done = True
        loggers = _tensorboards(trainer)
        if not loggers:
            return
        images, labels = batch
        images = images[: self.max_images].detach().float().cpu()
        collate = getattr(trainer.datamodule, "collate", None)
        if collate is not None:  # undo NormalizeCollate: (x - mean) / std
            images = images * collate.std + collate.mean
        grid = make_grid(images.clamp(0, 1), nrow=int(len(images) ** 0.5 + 0.999), padding=2)
        names = getattr(pl_module, "class_names", None)
        caption = ", ".join(
            names[i] if names else str(i) for i in labels[: self.max_images].tolist()
        )
        for tb in loggers:
            tb.experiment.add_image("train/augmented_samples", grid, global_step=0)
            tb.experiment.add_text("train/augmented_samples_labels", caption, global_step=0)

    def state_dict(self) -> dict[str, bool]:
        return {"done": self._done}

    def load_state_dict(self, state_dict: dict[str, bool]) -> None:
        self._done = bool(state_dict.get("done", False))
