"""The chest X-ray LightningDataModule over the Kaggle/Kermany folder layout, or over any
table of images a reader makes of a label file (``data.table``)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info, rank_zero_only, rank_zero_warn
from torch.utils.data import DataLoader

from pneumonia.data.batch_augment import PaddedCollate, as_is, batch_augment
from pneumonia.data.cache import default_cache_dir
from pneumonia.data.dataset import ChestXRayDataset, image_loader
from pneumonia.data.index import (
    DataIndex,
    SplitListing,
    class_names,
    evaluation_folder,
    find_split_dirs,
    list_split,
)
from pneumonia.data.leakage import LEAK_POLICIES, LeakPolicy
from pneumonia.data.preprocessing import Preprocessing
from pneumonia.data.readers import FOLDERS, read_index, table_classes
from pneumonia.data.run_splits import SplitQueries
from pneumonia.data.splits import training_splits
from pneumonia.data.synthetic import SYNTHETIC_WARNING, ensure_synthetic_dataset, is_synthetic
from pneumonia.data.transforms import GEOMETRY, Augmentation, train_transforms
from pneumonia.data.usable import BAD_IMAGE_POLICIES, BadImagePolicy, usable_images
from pneumonia.errors import InputValueError
from pneumonia.system.runtime import loader_workers

log = logging.getLogger(__name__)
PREPROCESSING_FIELDS = tuple(f.name for f in fields(Preprocessing))


class ChestXRayDataModule(SplitQueries, pl.LightningDataModule):
    """NORMAL vs PNEUMONIA images from ``root/{train,val,test}/{class}/*``, or from the table
    of images that ``table`` reads under ``root`` (a label file, a public collection:
    :mod:`pneumonia.data.readers`).

    Every argument is a key of ``conf/data/chest_xray.yaml``, whose comments say what it does
    (the one place they are explained); the defaults are the same (a test holds them equal).
    The preprocessing's are :class:`Preprocessing`'s own, the augmentation's
    :class:`~pneumonia.data.transforms.Augmentation`'s (drawn per image in the loader's
    workers, or for whole uint8 batches on the training device with ``augment_on=device``:
    :mod:`pneumonia.data.batch_augment`).
    """

    def __init__(
        self,
        root: str | Path,
        cache_dir: str | Path | None = None,
        cache: bool = True,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int | None = None,
        pin_memory: bool | None = None,
        val_split: Literal["patient", "official"] = "patient",
        val_fraction: float = 0.1,
        seed: int = 42,
        resize_size: int = Preprocessing.resize_size,
        resize_mode: str = Preprocessing.resize_mode,
        crop_size: int = Preprocessing.crop_size,
        interpolation: str = Preprocessing.interpolation,
        crop: Literal["center", "random", "random_resized"] = Augmentation.crop,
        hflip_prob: float = Augmentation.hflip_prob,
        rotation_degrees: float = Augmentation.rotation_degrees,
        translate: float = Augmentation.translate,
        augment: dict[str, float] | None = None,
        augment_on: Literal["loader", "device"] = "loader",
        mean: Sequence[float] = Preprocessing.mean,
        std: Sequence[float] = Preprocessing.std,
        on_bad_image: BadImagePolicy = "error",
        max_pixels: int = Preprocessing.max_pixels,
        max_upscale: float = Preprocessing.max_upscale,
        synthetic: bool = False,
        holdout_root: str | Path | None = None,
        classes: Sequence[str] | None = None,
        on_leak: LeakPolicy = "warn",
        table: dict[str, Any] | None = None,
        folds: int | None = None,
        fold: int = 0,
    ) -> None:
        super().__init__()
        for key, value, valid in (
            ("val_split", val_split, ("patient", "official")),
            ("on_bad_image", on_bad_image, BAD_IMAGE_POLICIES),
            ("on_leak", on_leak, LEAK_POLICIES),
        ):
            if value not in valid:
                raise InputValueError(f"data.{key}={value!r}; valid: {', '.join(valid)}")
        if folds is not None and not (folds >= 2 and 0 <= fold < folds):
            raise InputValueError(
                f"data.folds={folds} data.fold={fold}: use folds >= 2 and a fold from 0 to "
                "folds - 1"
            )
        # The preprocessing is saved once, as its own record (the model stores it); the
        # machine's settings (cache folder, workers) are no property of the run.
        self.save_hyperparameters(
            ignore=["cache_dir", "num_workers", "pin_memory", *PREPROCESSING_FIELDS]
        )
        self.root = Path(root).expanduser()
        self.hparams.root = str(self.root.resolve())  # checkpoints must not depend on the cwd
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.use_cache = cache
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.synthetic = synthetic
        self.chosen_classes = list(classes) if classes is not None else None
        self.table = dict(table) if table and table.get("reader") != FOLDERS else None
        self.leakage: list[dict] = []  # what the leak check found, for the run's outputs
        self.holdout_root = Path(holdout_root).expanduser() if holdout_root else None
        if self.holdout_root is not None:
            self.hparams.holdout_root = str(self.holdout_root.resolve())
        arguments = locals()  # the preprocessing and the augmentation: named as their fields
        self.preprocessing = Preprocessing(**{k: arguments[k] for k in PREPROCESSING_FIELDS})
        self.augmentation = Augmentation.of(augment, **{k: arguments[k] for k in GEOMETRY})
        self.train_transform = train_transforms(self.augmentation)
        self.batch_augment = batch_augment(augment_on, self.augmentation, mean, std)
        self.eval_transform = self.preprocessing.eval_transform
        self.collate = self.preprocessing.collate
        self._listed: DataIndex | None = None
        self._index: DataIndex | None = None
        self._splits: dict[str, SplitListing] = {}
        # path -> pixels: "root" for every split of the data root, "holdout" for that folder
        self._decoders: dict[str, Callable[[Path], np.ndarray]] = {}
        self._skipped: dict[str, str] = {}
        self._hashes: dict[str, str] = {}  # resolved path -> content hash, from the cache

    # ----------------------------------------------------------------- scanning & validation
    def prepare_data(self) -> None:
        """Generate demo data and build the cache once (rank 0), before ``setup`` everywhere."""
        self._scan()

    def _usable(
        self, listings: dict[str, SplitListing], where: Path, *, source: str, cache: bool
    ) -> dict[str, SplitListing]:
        """``listings`` under the bad-image policy; how ``source``'s images are read is kept."""
        usable = usable_images(
            listings,
            self.preprocessing,
            cache_dir=self.cache_dir if cache else None,
            policy=self.hparams.on_bad_image,
            warn=rank_zero_warn,
            where=where,
        )
        self._skipped |= usable.skipped
        self._hashes |= usable.hashes
        self._decoders[source] = usable.decode
        return usable.listings

    def listed(self) -> DataIndex:
        """What the data holds, listed (nothing decoded yet): a wrong layout or label file
        fails here, before any model is built.

        Raises:
            DataLayoutError: the folder layout or the label file is not what it should be.
        """
        if self._listed is None:
            if self.table is not None:
                self._listed = read_index(self.root, self.table, self.chosen_classes)
            else:
                if self.synthetic:
                    ensure_synthetic_dataset(self.root)
                self._listed = DataIndex.scan(self.root, self.chosen_classes)
        return self._listed

    def _scan(self) -> DataIndex:
        if self._index is not None:
            return self._index
        index = self.listed()
        if is_synthetic(self.root) and rank_zero_only.rank == 0:
            log.warning(SYNTHETIC_WARNING, self.root)
        usable = self._usable(index.splits, self.root, source="root", cache=self.use_cache)
        self._index = replace(index, splits=usable)
        return self._index

    # ----------------------------------------------------------------- splits
    def setup(self, stage: str | None = None) -> None:
        listings = self._scan().splits
        known = set(self._splits)
        if self.holdout_root is not None and "holdout" not in self._splits:
            listing = list_split(self.holdout_root, self.classes, self.chosen_classes)
            # Read from its own files, not the cache, as a new hospital's images would be.
            self._splits |= self._usable(
                {"holdout": listing}, self.holdout_root, source="holdout", cache=False
            )
        if stage in (None, "fit", "validate") and "train" not in self._splits:
            splits, self.leakage = training_splits(
                listings,
                self._splits.get("holdout"),
                self.classes,
                val_split=self.hparams.val_split,
                fraction=self.hparams.val_fraction,
                seed=self.hparams.seed,
                on_leak=self.hparams.on_leak,
                warn=rank_zero_warn,
                info=rank_zero_info,
                hashes=self._hashes,
                folds=self.hparams.folds,
                fold=self.hparams.fold,
            )
            self._splits |= splits
        if stage in (None, "test", "predict") and "test" in listings:
            self._splits["test"] = listings["test"]
        if set(self._splits) != known and rank_zero_only.rank == 0:
            log.info("%s", self.summary())

    # ----------------------------------------------------------------- public properties
    @property
    def classes(self) -> list[str]:
        if self._index is not None:
            return self._index.classes
        if self.table is not None:
            return table_classes(self.table, self.chosen_classes)
        return class_names(find_split_dirs(self.root)["train"], self.chosen_classes)

    @property
    def skipped(self) -> dict[str, str]:
        """Files dropped with ``on_bad_image=skip``: resolved path -> reason."""
        return dict(self._skipped)

    def has_split(self, split: str) -> bool:
        """Whether ``split`` exists (``test`` needs a ``test/`` folder)."""
        if split in ("train", "val"):
            return True
        if split == "holdout":
            return self.holdout_root is not None
        return split in self._scan().splits

    def num_test_images(self) -> int:
        """Images in ``test/`` (0 without one), known before ``setup("test")``."""
        listing = self._scan().splits.get("test")
        return len(listing.files) if listing else 0

    def _split(self, split: str) -> SplitListing:
        if split not in self._splits:
            if split == "test" and not self.has_split("test"):
                evaluation_folder(self.root)  # raises: there is no test split, and what to do
            stage = "test" if split == "test" else "fit"
            raise RuntimeError(f"Split {split!r} is not set up: call setup({stage!r}) first.")
        return self._splits[split]

    # ----------------------------------------------------------------- loaders
    def _on_gpu(self) -> bool:
        trainer = getattr(self, "trainer", None)
        return trainer.strategy.root_device.type == "cuda" if trainer else torch.cuda.is_available()

    def _loader(
        self, split: str, transform, *, shuffle: bool, shard: bool, collate=None
    ) -> DataLoader:
        data = self._split(split)
        decode = self._decoders["holdout" if split == "holdout" else "root"]
        on_gpu = self._on_gpu()
        workers = self.num_workers if self.num_workers is not None else loader_workers(on_gpu)
        return image_loader(
            ChestXRayDataset(data.files, data.labels, transform, decode),
            collate=collate or self.collate,
            batch_size=self.batch_size if shuffle else self.eval_batch_size,
            shuffle=shuffle,
            num_workers=workers,
            pin_memory=self.pin_memory if self.pin_memory is not None else on_gpu,
            shard=shard,
        )

    def eval_dataloader(self, split: str, *, tta: bool = False) -> DataLoader:
        """Every image of a split (or its ``tta`` views), in order, unsharded (rank 0 alone)."""
        transform = self.preprocessing.tta_transform if tta else self.eval_transform
        return self._loader(split, transform, shuffle=False, shard=False)

    def train_dataloader(self) -> DataLoader:
        if self.batch_augment is not None:  # whole uint8 batches, augmented on the device
            return self._loader("train", as_is, shuffle=True, shard=True, collate=PaddedCollate())
        return self._loader("train", self.train_transform, shuffle=True, shard=True)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """``augment_on=device``: the training batch, now on the device, augmented there."""
        if self.batch_augment is None or len(batch) != 3:  # (images, sizes, labels): training
            return batch
        images, sizes, labels = batch
        return self.batch_augment.to(images.device)(images, sizes), labels

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_transform, shuffle=False, shard=True)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_transform, shuffle=False, shard=True)
