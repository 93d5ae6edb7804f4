"""The chest X-ray LightningDataModule over the Kaggle/Kermany folder layout."""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from pytorch_lightning.utilities import rank_zero_only, rank_zero_warn
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from tqdm import tqdm

from pneumonia.data.cache import DecodedImageCache, default_cache_dir
from pneumonia.data.images import DEFAULT_MAX_PIXELS, BadImageError, load_gray, load_resized
from pneumonia.data.scan import SplitListing, class_names, find_split_dirs, list_split
from pneumonia.data.splits import patient_id, patient_split
from pneumonia.data.synthetic import SYNTHETIC_MARKER, ensure_synthetic_dataset
from pneumonia.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    NormalizeCollate,
    eval_transforms,
    train_transforms,
)

log = logging.getLogger(__name__)

OFFICIAL_VAL_MIN = 100


class BadImagesError(ValueError):
    """One or more image files cannot be used; lists every one of them."""


class ChestXRayDataset(Dataset):
    """Labelled image files -> (uint8 (C, H, W) image after ``transform``, label)."""

    def __init__(
        self,
        files: Sequence[Path],
        labels: Sequence[int],
        transform,
        *,
        resize_size: int,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        cache: DecodedImageCache | None = None,
    ) -> None:
        self.files = list(files)
        self.labels = list(labels)
        self.transform = transform
        self.resize_size = resize_size
        self.max_pixels = max_pixels
        self.cache = cache

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.load(self.files[i]), self.labels[i]

    def load(self, path: Path) -> torch.Tensor:
        """One file -> its transformed uint8 image, from the cache when there is one."""
        if self.cache is not None:
            pixels = self.cache.get(path)
        else:
            pixels = load_resized(path, self.resize_size, self.max_pixels)
        image = tv_tensors.Image(torch.from_numpy(pixels).unsqueeze(0))  # (H, W) -> (1, H, W)
        return self.transform(image)


@dataclass
class _Split:
    files: list[Path]
    labels: list[int]


class ChestXRayDataModule(pl.LightningDataModule):
    """NORMAL vs PNEUMONIA images from ``root/{train,val,test}/{class}/*``.

    Args:
        root: folder holding ``train/`` (and optionally ``val/``, ``test/``).
        cache_dir: where decoded images are cached (default ``~/.cache/pneumonia``).
        cache: decode each image once into a uint8 memmap at ``resize_size``.
        val_split: ``"patient"`` pools train+val and carves a patient-grouped, stratified split
            of ``val_fraction``; ``"official"`` uses ``val/`` as it is.
        on_bad_image: ``"error"`` lists unusable files in one error; ``"skip"`` warns and drops.
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
        crop_size: int = 224,
        crop: Literal["center", "random"] = "center",
        hflip_prob: float = 0.5,
        rotation_degrees: float = 10.0,
        translate: float = 0.05,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        on_bad_image: Literal["error", "skip"] = "error",
        max_pixels: int = DEFAULT_MAX_PIXELS,
        synthetic: bool = False,
    ) -> None:
        super().__init__()
        if val_split not in ("patient", "official"):
            raise ValueError(f"data.val_split must be 'patient' or 'official', got {val_split!r}")
        if on_bad_image not in ("error", "skip"):
            raise ValueError(f"data.on_bad_image must be 'error' or 'skip', got {on_bad_image!r}")
        if crop_size > resize_size:
            raise ValueError(
                f"data.crop_size ({crop_size}) must not exceed data.resize_size ({resize_size})"
            )
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
        self.resize_size = resize_size
        self.max_pixels = max_pixels
        self.on_bad_image = on_bad_image
        self.synthetic = synthetic
        self.train_transform = train_transforms(
            crop_size=crop_size,
            crop=crop,
            hflip_prob=hflip_prob,
            rotation_degrees=rotation_degrees,
            translate=translate,
        )
        self.eval_transform = eval_transforms(crop_size=crop_size)
        self.collate = NormalizeCollate(tuple(mean), tuple(std))

        self._classes: list[str] | None = None
        self._listings: dict[str, SplitListing] | None = None
        self._skipped: dict[str, str] = {}
        self._cache: DecodedImageCache | None = None
        self._splits: dict[str, _Split] = {}

    # ----------------------------------------------------------------- scanning & validation
    def prepare_data(self) -> None:
        """Generate demo data and build the cache once (rank 0), before ``setup`` everywhere."""
        self._scan()

    def _scan(self) -> dict[str, SplitListing]:
        if self._listings is not None:
            return self._listings
        if self.synthetic:
            ensure_synthetic_dataset(self.root)
        dirs = find_split_dirs(self.root)
        classes = class_names(dirs["train"])
        listings = {split: list_split(d, classes) for split, d in dirs.items()}
        if (self.root / SYNTHETIC_MARKER).exists():
            message = (
                f"{self.root} holds SYNTHETIC demo images, not real chest X-rays: "
                "its metrics say nothing about pneumonia detection."
            )
            if rank_zero_only.rank == 0:
                log.warning(message)
            rank_zero_warn(message)
        all_files = [f for listing in listings.values() for f in listing.files]
        if self.use_cache:
            self._cache = DecodedImageCache.open_or_build(
                all_files,
                size=self.resize_size,
                cache_dir=self.cache_dir,
                max_pixels=self.max_pixels,
            )
            bad = dict(self._cache.bad)
        else:
            bad = _verify(all_files, self.max_pixels)
        if bad:
            lines = "\n".join(f"  {path}: {reason}" for path, reason in sorted(bad.items()))
            if self.on_bad_image == "error":
                raise BadImagesError(
                    f"{len(bad)} of {len(all_files)} image files under {self.root} cannot be "
                    f"used:\n{lines}\nFix or remove them, or set data.on_bad_image=skip to train "
                    "without them."
                )
            rank_zero_warn(
                f"Skipping {len(bad)} unusable image files (data.on_bad_image=skip):\n{lines}"
            )
            for listing in listings.values():
                keep = [i for i, f in enumerate(listing.files) if str(f.resolve()) not in bad]
                listing.files = [listing.files[i] for i in keep]
                listing.labels = [listing.labels[i] for i in keep]
        self._skipped = bad
        self._classes = classes
        self._listings = listings
        return listings

    # ----------------------------------------------------------------- splits
    def setup(self, stage: str | None = None) -> None:
        listings = self._scan()
        known = set(self._splits)
        if stage in (None, "fit", "validate") and "train" not in self._splits:
            self._splits.update(self._fit_splits(listings))
            for cls, n in zip(self.classes, self.split_counts("train"), strict=True):
                if n == 0:
                    raise ValueError(f"The training split has no {cls} images after the split.")
        if stage in (None, "test", "predict") and "test" in listings:
            self._splits["test"] = _Split(listings["test"].files, listings["test"].labels)
        if set(self._splits) != known and rank_zero_only.rank == 0:
            log.info("%s", self.summary())

    def _fit_splits(self, listings: dict[str, SplitListing]) -> dict[str, _Split]:
        train = listings["train"]
        val = listings.get("val")
        if self.val_split == "official" and val is not None:
            if len(val.files) < OFFICIAL_VAL_MIN:
                rank_zero_warn(
                    f"The official val split holds only {len(val.files)} images: too few for "
                    "model selection or threshold tuning. data.val_split=patient carves a "
                    "patient-grouped split instead."
                )
            return {
                "train": _Split(train.files, train.labels),
                "val": _Split(val.files, val.labels),
            }
        if self.val_split == "official":
            rank_zero_warn(
                f"data.val_split=official but {self.root} has no val/ folder: carving a "
                f"patient-grouped {self.val_fraction:.0%} of train instead."
            )
        files, labels = list(train.files), list(train.labels)
        if val is not None and self.val_split == "patient":
            files += val.files
            labels += val.labels
        train_idx, val_idx = patient_split(
            files, labels, fraction=self.val_fraction, seed=self.seed
        )
        return {
            "train": _Split([files[i] for i in train_idx], [labels[i] for i in train_idx]),
            "val": _Split([files[i] for i in val_idx], [labels[i] for i in val_idx]),
        }

    # ----------------------------------------------------------------- public properties
    @property
    def classes(self) -> list[str]:
        if self._classes is None:
            self._classes = class_names(find_split_dirs(self.root)["train"])
        return self._classes

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def skipped(self) -> dict[str, str]:
        """Files dropped with ``on_bad_image=skip``: path -> reason."""
        return dict(self._skipped)

    def has_split(self, split: str) -> bool:
        """Whether ``split`` exists (``test`` needs a ``test/`` folder)."""
        if split in ("train", "val"):
            return True
        return split in self._scan()

    def _split(self, split: str) -> _Split:
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
        """Image paths of ``split`` (``train``, ``val`` after ``setup("fit")``; ``test``)."""
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
        head = ["split", *self.classes, "total", "patients"]
        rows = [head]
        for split in ("train", "val", "test"):
            if split in self._splits:
                counts = self.split_counts(split)
                rows.append(
                    [split, *map(str, counts), str(sum(counts)), str(len(self.patients(split)))]
                )
        widths = [max(len(r[c]) for r in rows) for c in range(len(head))]
        lines = [
            "  ".join(
                v.ljust(w) if c == 0 else v.rjust(w)
                for c, (v, w) in enumerate(zip(r, widths, strict=True))
            )
            for r in rows
        ]
        lines.append(f"skipped files: {len(self._skipped)}")
        return f"Data at {self.root}:\n" + "\n".join(lines)

    # ----------------------------------------------------------------- loaders
    def _on_gpu(self) -> bool:
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return trainer.strategy.root_device.type == "cuda"
        return torch.cuda.is_available()

    def _loader(self, split: str, transform, *, shuffle: bool) -> DataLoader:
        data = self._split(split)
        dataset = ChestXRayDataset(
            data.files,
            data.labels,
            transform,
            resize_size=self.resize_size,
            max_pixels=self.max_pixels,
            cache=self._cache,
        )
        on_gpu = self._on_gpu()
        workers = self.num_workers if self.num_workers is not None else _auto_workers(on_gpu)
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
            drop_last=False,
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


def _auto_workers(on_gpu: bool) -> int:
    """Loader workers: on small CPU machines workers fight the compute threads (DESIGN.md)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    if on_gpu:
        return min(8, max(1, cores - 1))
    return 0 if cores <= 4 else min(4, cores // 4)


def _verify(files: list[Path], max_pixels: int) -> dict[str, str]:
    """Fully decode every file (no cache): path -> reason for those that fail."""

    def check(path: Path) -> str | None:
        try:
            load_gray(path, max_pixels)
        except BadImageError as e:
            return str(e)
        return None

    bad: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        results = tqdm(pool.map(check, files), total=len(files), desc="Checking images", unit="img")
        for path, reason in zip(files, results, strict=True):
            if reason is not None:
                bad[str(path.resolve())] = reason
    return bad
