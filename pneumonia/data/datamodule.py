"""The chest X-ray LightningDataModule over the Kaggle/Kermany folder layout."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Literal

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from pytorch_lightning.utilities import rank_zero_only, rank_zero_warn
from torch.utils.data import DataLoader

from pneumonia.data.cache import default_cache_dir
from pneumonia.data.dataset import ChestXRayDataset, image_loader
from pneumonia.data.index import (
    DataIndex,
    SplitListing,
    class_names,
    find_split_dirs,
    list_split,
    summary_table,
)
from pneumonia.data.leakage import LEAK_POLICIES, LeakPolicy, check_leaks
from pneumonia.data.preprocessing import Preprocessing
from pneumonia.data.splits import fit_splits, patient_id, without_patients
from pneumonia.data.synthetic import SYNTHETIC_MARKER, ensure_synthetic_dataset
from pneumonia.data.transforms import train_transforms
from pneumonia.data.usable import BadImagePolicy, usable_images
from pneumonia.runtime import loader_workers

log = logging.getLogger(__name__)
PREPROCESSING_FIELDS = tuple(f.name for f in fields(Preprocessing))


class ChestXRayDataModule(pl.LightningDataModule):
    """NORMAL vs PNEUMONIA images from ``root/{train,val,test}/{class}/*``.

    The defaults are the project's (``conf/data/chest_xray.yaml`` mirrors them; a test holds
    them equal); those of the preprocessing are :class:`Preprocessing`'s own.

    Args:
        root: folder holding ``train/`` (and optionally ``val/``, ``test/``).
        cache_dir: where decoded images are cached (default: ``default_cache_dir()``).
        cache: decode each image once into a uint8 memmap at ``resize_size``.
        val_split: ``"patient"`` pools train+val and carves a patient-grouped, stratified split
            of ``val_fraction``; ``"official"`` uses ``val/`` as it is.
        resize_size, resize_mode, crop_size, interpolation, mean, std, max_pixels: the
            :class:`Preprocessing`, which checkpoints store.
        crop, hflip_prob, rotation_degrees, translate: training augmentation. No horizontal
            flip by default: a chest is not mirror-symmetric (the heart sits on the left).
        augment: acquisition changes for training, keyword arguments of
            :func:`~pneumonia.data.transforms.train_transforms` (``crop_scale``,
            ``brightness``, ``contrast``, ``gamma``, ``blur_prob``, ``noise_std``).
        on_bad_image: ``"error"`` lists unusable files in one error; ``"skip"`` warns and drops.
        holdout_root: a labelled folder (``NORMAL/``, ``PNEUMONIA/``) kept out of training:
            every patient in it is removed from the training and validation pool, and its
            images form the ``holdout`` split, read from their own files (not the cache).
            Original-resolution files of unseen patients check what a validation split of
            the training collection cannot.
        classes: the two class folders to use where ``train/`` holds more (the model is
            binary); the others are left out and logged.
        on_leak: identical images or shared patients between train/val and val, test or
            the holdout folder: ``warn`` (counts and examples; also in ``leakage``),
            ``error``, or ``drop`` them from training and validation.
        synthetic: generate the synthetic demo dataset at ``root`` when it is missing.
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
        crop: Literal["center", "random", "random_resized"] = "center",
        hflip_prob: float = 0.0,
        rotation_degrees: float = 10.0,
        translate: float = 0.05,
        augment: dict[str, float] | None = None,
        mean: Sequence[float] = Preprocessing.mean,
        std: Sequence[float] = Preprocessing.std,
        on_bad_image: BadImagePolicy = "error",
        max_pixels: int = Preprocessing.max_pixels,
        synthetic: bool = False,
        holdout_root: str | Path | None = None,
        classes: Sequence[str] | None = None,
        on_leak: LeakPolicy = "warn",
    ) -> None:
        super().__init__()
        if val_split not in ("patient", "official"):
            raise ValueError(f"data.val_split must be 'patient' or 'official', got {val_split!r}")
        if on_bad_image not in ("error", "skip"):
            raise ValueError(f"data.on_bad_image must be 'error' or 'skip', got {on_bad_image!r}")
        if on_leak not in LEAK_POLICIES:
            raise ValueError(f"data.on_leak={on_leak!r}; valid: {', '.join(LEAK_POLICIES)}")
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
        self.leakage: list[dict] = []  # what the leak check found, for the run's outputs
        self.holdout_root = Path(holdout_root).expanduser() if holdout_root else None
        if self.holdout_root is not None:
            self.hparams.holdout_root = str(self.holdout_root.resolve())
        self.preprocessing = Preprocessing(
            resize_size=resize_size,
            resize_mode=resize_mode,
            crop_size=crop_size,
            interpolation=interpolation,
            mean=tuple(mean),
            std=tuple(std),
            max_pixels=max_pixels,
        )
        self.train_transform = train_transforms(
            crop_size=crop_size,
            crop=crop,
            hflip_prob=hflip_prob,
            rotation_degrees=rotation_degrees,
            translate=translate,
            **(augment or {}),
        )
        self.eval_transform = self.preprocessing.eval_transform
        self.collate = self.preprocessing.collate

        self._index: DataIndex | None = None
        self._splits: dict[str, SplitListing] = {}
        # path -> pixels: "root" for every split of the data root, "holdout" for that folder
        self._decoders: dict[str, Callable[[Path], np.ndarray]] = {}
        self._skipped: dict[str, str] = {}

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
        self._decoders[source] = usable.decode
        return usable.listings

    def _scan(self) -> DataIndex:
        if self._index is not None:
            return self._index
        if self.synthetic:
            ensure_synthetic_dataset(self.root)
        index = DataIndex.scan(self.root, self.chosen_classes)
        if (self.root / SYNTHETIC_MARKER).exists() and rank_zero_only.rank == 0:
            log.warning(
                "%s holds SYNTHETIC demo images, not real chest X-rays: its metrics say nothing "
                "about pneumonia detection.",
                self.root,
            )
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
            self._setup_fit(listings)
        if stage in (None, "test", "predict") and "test" in listings:
            self._splits["test"] = listings["test"]
        if set(self._splits) != known and rank_zero_only.rank == 0:
            log.info("%s", self.summary())

    def _setup_fit(self, listings: dict[str, SplitListing]) -> None:
        held = self.patients("holdout") if "holdout" in self._splits else set()
        splits = fit_splits(
            self._without(listings["train"], held),
            self._without(listings.get("val"), held),
            val_split=self.hparams.val_split,
            fraction=self.hparams.val_fraction,
            seed=self.hparams.seed,
            warn=rank_zero_warn,
        )
        if "holdout" in self._splits:
            splits["holdout"] = self._splits["holdout"]
        test = listings.get("test")
        splits, self.leakage = check_leaks(
            splits, test.files if test else None, self.hparams.on_leak, rank_zero_warn
        )
        self._splits |= splits
        for cls, n in zip(self.classes, self.split_counts("train"), strict=True):
            if n == 0:
                raise ValueError(f"The training split has no {cls} images after the split.")

    def _without(self, listing: SplitListing | None, patients: set[str]) -> SplitListing | None:
        """``listing`` less every image of the holdout folder's ``patients``."""
        if listing is None or not patients:
            return listing
        kept = without_patients(listing, patients)
        removed = len(listing.files) - len(kept.files)
        if removed and rank_zero_only.rank == 0:
            log.info(
                "Holdout %s: %d images of its %d patients left out of training and validation",
                self.holdout_root,
                removed,
                len(patients),
            )
        return kept

    # ----------------------------------------------------------------- public properties
    @property
    def classes(self) -> list[str]:
        if self._index is not None:
            return self._index.classes
        return class_names(find_split_dirs(self.root)["train"], self.chosen_classes)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

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
                raise FileNotFoundError(
                    f"There is no test split: {self.root / 'test'} does not exist. Add a test/ "
                    "folder with the same class folders as train/, or evaluate on data.root "
                    "pointing at a dataset that has one."
                )
            stage = "test" if split == "test" else "fit"
            raise RuntimeError(f"Split {split!r} is not set up: call setup({stage!r}) first.")
        return self._splits[split]

    def files(self, split: str) -> list[Path]:
        """Image paths of ``split`` (``train``, ``val`` after ``setup("fit")``; ``test``;
        ``holdout`` with ``holdout_root``)."""
        return list(self._split(split).files)

    def labels(self, split: str) -> list[int]:
        return list(self._split(split).labels)

    def patients(self, split: str) -> set[str]:
        return {patient_id(f) for f in self._split(split).files}

    def split_counts(self, split: str) -> list[int]:
        """Images per class, in class-index order."""
        counts = Counter(self._split(split).labels)
        return [counts.get(i, 0) for i in range(self.num_classes)]

    @property
    def class_weights(self) -> torch.Tensor:
        """n / (k * n_c) from the training split, in class-index order."""
        counts = torch.tensor(self.split_counts("train"), dtype=torch.float64)
        weights = counts.sum() / (len(counts) * counts)
        return weights.float()

    def summary(self) -> str:
        """A table of images per split and class, patients per split, skipped files."""
        rows = {
            split: (self.split_counts(split), len(self.patients(split)))
            for split in ("train", "val", "test", "holdout")
            if split in self._splits
        }
        return summary_table(self.root, self.classes, rows, len(self.skipped))

    # ----------------------------------------------------------------- loaders
    def _on_gpu(self) -> bool:
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return trainer.strategy.root_device.type == "cuda"
        return torch.cuda.is_available()

    def _loader(self, split: str, transform, *, shuffle: bool, shard: bool) -> DataLoader:
        data = self._split(split)
        decode = self._decoders["holdout" if split == "holdout" else "root"]
        dataset = ChestXRayDataset(data.files, data.labels, transform, decode)
        on_gpu = self._on_gpu()
        workers = self.num_workers if self.num_workers is not None else loader_workers(on_gpu)
        sampler = None
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if shard and not shuffle and distributed:
            # Lightning's default DistributedSampler pads shards with repeated images, which
            # would count some validation images twice; this one gives each image to one rank.
            sampler = UnrepeatedDistributedSampler(dataset, shuffle=False)
        return image_loader(
            dataset,
            collate=self.collate,
            batch_size=self.batch_size if shuffle else self.eval_batch_size,
            shuffle=shuffle,
            num_workers=workers,
            pin_memory=self.pin_memory if self.pin_memory is not None else on_gpu,
            sampler=sampler,
        )

    def eval_dataloader(self, split: str) -> DataLoader:
        """Every image of any split with the deterministic eval transforms, in file order, on
        whichever process asks (the checks after training run on rank 0 alone)."""
        return self._loader(split, self.eval_transform, shuffle=False, shard=False)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.train_transform, shuffle=True, shard=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_transform, shuffle=False, shard=True)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_transform, shuffle=False, shard=True)
