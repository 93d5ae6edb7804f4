"""The Dataset over labelled image files, and the DataLoaders built on it.

Training (the DataModule) and evaluation of any labelled folder build their loaders with
:func:`image_loader`, so both hand the model batches made the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset

from pneumonia.data.images import BadImageError
from pneumonia.data.preprocessing import Preprocessing, as_image
from pneumonia.data.table import SplitListing
from pneumonia.data.usable import BadImagePolicy, usable_images


class ChestXRayDataset(Dataset):
    """Labelled image files -> (uint8 (C, H, W) image after ``transform``, label).

    Args:
        decode: path -> (H, W) uint8 pixels at the training resolution: the decoded-image
            cache's ``get`` or :meth:`Preprocessing.decode`.
    """

    def __init__(
        self,
        files: Sequence[Path],
        labels: Sequence[int],
        transform: Callable[[torch.Tensor], torch.Tensor],
        decode: Callable[[Path], np.ndarray],
    ) -> None:
        self.files = list(files)
        self.labels = list(labels)
        self.transform = transform
        self.decode = decode

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path = self.files[i]
        try:
            pixels = self.decode(path)
        except BadImageError as e:  # it was readable when the run started
            raise BadImageError(
                f"{path}: {e}. The file was readable when the run started: was it changed or "
                "removed since? Restore it (or rerun with data.on_bad_image=skip to go on "
                "without it)."
            ) from e
        return self.transform(as_image(pixels)), self.labels[i]


def image_loader(
    dataset: ChestXRayDataset,
    *,
    collate: Callable,
    batch_size: int,
    shuffle: bool = False,
    num_workers: int = 0,
    pin_memory: bool = False,
    shard: bool = False,
) -> DataLoader:
    """Batches of ``dataset``: shuffled for training, else in file order.

    Args:
        shard: under DDP, give each process its own share of an evaluation split (Lightning's
            validation and test loops); every process otherwise sees every image.
    """
    sampler = None
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if shard and not shuffle and distributed:
        # Lightning's default DistributedSampler pads shards with repeated images, which would
        # count some validation images twice; this one gives each image to one rank.
        sampler = UnrepeatedDistributedSampler(dataset, shuffle=False)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        collate_fn=collate,
        # A last training batch of one image breaks BatchNorm ("expected more than 1 value
        # per channel"); shuffled, that image lands in a full batch in other epochs.
        drop_last=shuffle and len(dataset) % batch_size == 1,
    )


def labelled_loader(
    listing: SplitListing,
    preprocessing: Preprocessing,
    *,
    where: Path,
    cache_dir: Path | None,
    on_bad_image: BadImagePolicy,
    batch_size: int,
    num_workers: int,
    warn: Callable[[str], None],
    tta: bool = False,
) -> tuple[SplitListing, DataLoader]:
    """Labelled images (a labelled folder, or a table's rows) checked under the bad-image
    policy, decoded (and, with a ``cache_dir``, cached) alone: no training split. With
    ``tta``, each sample is the image's views (``Preprocessing.tta_transform``).

    Args:
        where: the folder the images come from, for the messages.

    Returns:
        The usable rows, whole (files, labels, attributes), and the evaluation loader.
    """
    usable = usable_images(
        {"folder": listing},
        preprocessing,
        cache_dir=cache_dir,
        policy=on_bad_image,
        warn=warn,
        where=where,
    )
    listing = usable.listings["folder"]
    transform = preprocessing.tta_transform if tta else preprocessing.eval_transform
    dataset = ChestXRayDataset(listing.files, listing.labels, transform, usable.decode)
    loader = image_loader(
        dataset, collate=preprocessing.collate, batch_size=batch_size, num_workers=num_workers
    )
    return listing, loader
