"""Lightning callbacks of this project (the standard ones come from Lightning itself)."""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.loggers import TensorBoardLogger
from torchvision.utils import make_grid


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
        loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
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
