"""The chest X-ray LightningDataModule over the Kaggle/Kermany folder layout."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from pytorch_lightning.utilities import rank_zero_only, rank_zero_warn
from torch.utils.data import DataLoader

from pneumonia.data.cache import DecodedImageCache, default_cache_dir
from pneumonia.data.dataset import ChestXRayDataset, Preprocessing
from pneumonia.data.images import DEFAULT_MAX_PIXELS
from pneumonia.data.index import (
    BadImagePolicy,
    DataIndex,
    SplitListing,
    class_names,
    find_split_dirs,
    list_split,
    summary_table,
    usable_listing,
    verify_images,
)
from pneumonia.data.leakage import LEAK_POLICIES, LeakPolicy, check_leaks
from pneumonia.data.splits import Split, fit_splits, patient_id, without_patients
from pneumonia.data.synthetic import SYNTHETIC_MARKER, ensure_synthetic_dataset
from pneumonia.data.transforms import IMAGENET_MEAN, IMAGENET_STD, train_transforms
from pneumonia.runtime import loader_workers

log = logging.getLogger(__name__)


class ChestXRayDataModule(pl.LightningDataModule):
    """NORMAL vs PNEUMONIA images from ``root/{train,val,test}/{class}/*``.

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
        resize_size: int = 256,
        resize_mode: str = "shorter",
        crop_size: int = 224,
        interpolation: str = "bicubic",
        crop: Literal["center", "random", "random_resized"] = "center",
        hflip_prob: float = 0.0,
        rotation_degrees: float = 10.0,
        translate: float = 0.05,
        augment: dict[str, float] | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        on_bad_image: BadImagePolicy = "error",
        max_pixels: int = DEFAULT_MAX_PIXELS,
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
        self.save_hyperparameters(ignore=["cache_dir", "num_workers", "pin_memory"])
        self.root = Path(root).expanduser()
        self.hparams.root = str(self.root.resolve())  # checkpoints must not depend on the cwd
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.use_cache = cache
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.val_split = val_split
        self.val_fraction = val_fraction
        self.seed = seed
        self.on_bad_image = on_bad_image
        self.synthetic = synthetic
        self.chosen_classes = list(classes) if classes is not None else None
        if on_leak not in LEAK_POLICIES:
            raise ValueError(f"data.on_leak={on_leak!r}; valid: {', '.join(LEAK_POLICIES)}")
        self.on_leak = on_leak
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
        self._cache: DecodedImageCache | None = None
        self._splits: dict[str, Split] = {}

    # ----------------------------------------------------------------- scanning & validation
    def prepare_data(self) -> None:
        """Generate demo data and build the cache once (rank 0), before ``setup`` everywhere."""
        self._scan()

    def _scan(self) -> DataIndex:
        if self._index is not None:
            return self._index
        if self.synthetic:
            ensure_synthetic_dataset(self.root)
        index = DataIndex.scan(self.root, self.chosen_classes)
        if (self.root / SYNTHETIC_MARKER).exists():
            message = (
                f"{self.root} holds SYNTHETIC demo images, not real chest X-rays: "
                "its metrics say nothing about pneumonia detection."
            )
            if rank_zero_only.rank == 0:
                log.warning(message)
            rank_zero_warn(message)
        if self.use_cache:
            self._cache = DecodedImageCache.open_or_build(
                index.all_files(),
                decode=self.preprocessing.decode,
                settings=self.preprocessing.decode_settings(),
                cache_dir=self.cache_dir,
            )
            bad = dict(self._cache.bad)
        else:
            bad = verify_images(index.all_files(), self.preprocessing.max_pixels)
        index.drop_bad(bad, self.on_bad_image, rank_zero_warn)
        self._index = index
        return index

    # ----------------------------------------------------------------- splits
    def setup(self, stage: str | None = None) -> None:
        listings = self._scan().splits
        known = set(self._splits)
        if self.holdout_root is not None and "holdout" not in self._splits:
            listing = list_split(self.holdout_root, self.classes, self.chosen_classes)
            bad = verify_images(listing.files, self.preprocessing.max_pixels)
            usable_listing(
                self.holdout_root, self.classes, listing, bad, self.on_bad_image, rank_zero_warn
            )
            self._splits["holdout"] = Split(listing.files, listing.labels)
        if stage in (None, "fit", "validate") and "train" not in self._splits:
            self._splits.update(
                fit_splits(
                    self._without_holdout_patients(listings["train"]),
                    self._without_holdout_patients(listings.get("val")),
                    val_split=self.val_split,
                    fraction=self.val_fraction,
                    seed=self.seed,
                    warn=rank_zero_warn,
                )
            )
            test = listings.get("test")
            self.leakage = check_leaks(
                self._splits, test.files if test else None, self.on_leak, rank_zero_warn
            )
            for cls, n in zip(self.classes, self.split_counts("train"), strict=True):
                if n == 0:
                    raise ValueError(f"The training split has no {cls} images after the split.")
        if stage in (None, "test", "predict") and "test" in listings:
            self._splits["test"] = Split(listings["test"].files, listings["test"].labels)
        if set(self._splits) != known and rank_zero_only.rank == 0:
            log.info("%s", self.summary())

    def _without_holdout_patients(self, listing: SplitListing | None) -> SplitListing | None:
        """``listing`` less every image of a patient in the holdout folder."""
        if listing is None or "holdout" not in self._splits:
            return listing
        held = self.patients("holdout")
        kept = without_patients(listing, held)
        removed = len(listing.files) - len(kept.files)
        if removed and rank_zero_only.rank == 0:
            log.info(
                "Holdout %s: %d images of its %d patients left out of training and validation",
                self.holdout_root,
                removed,
                len(held),
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
        """Files dropped with ``on_bad_image=skip``: path -> reason."""
        return dict(self._index.skipped) if self._index else {}

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

    def _split(self, split: str) -> Split:
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

    def _loader(self, split: str, transform, *, shuffle: bool) -> DataLoader:
        data = self._split(split)
        cached = self._cache is not None and split != "holdout"
        decode = self._cache.get if cached else self.preprocessing.decode
        dataset = ChestXRayDataset(data.files, data.labels, transform, decode)
        on_gpu = self._on_gpu()
        workers = self.num_workers if self.num_workers is not None else loader_workers(on_gpu)
        sampler = None
        if (
            not shuffle
            and dist.is_available()
            and dist.is_initialized()
            and dist.get_world_size() > 1
        ):
            # Lightning's default DistributedSampler pads shards with repeated images, which
            # would count some validation images twice; this one gives each image to one rank.
            sampler = UnrepeatedDistributedSampler(dataset, shuffle=False)
        return DataLoader(
            dataset,
            batch_size=self.batch_size if shuffle else self.eval_batch_size,
            shuffle=shuffle,
            sampler=sampler,
            num_workers=workers,
            pin_memory=self.pin_memory if self.pin_memory is not None else on_gpu,
            persistent_workers=workers > 0,
            collate_fn=self.collate,
            # A last training batch of one image breaks BatchNorm ("expected more than 1 value
            # per channel"); shuffled, that image lands in a full batch in other epochs.
            drop_last=shuffle and len(dataset) % self.batch_size == 1,
        )

    def eval_dataloader(self, split: str) -> DataLoader:
        """Any split with the deterministic eval transforms, in file order."""
        return self._loader(split, self.eval_transform, shuffle=False)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.train_transform, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_transform, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_transform, shuffle=False)
