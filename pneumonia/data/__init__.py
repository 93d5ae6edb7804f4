"""Chest X-ray data: folder scanning, patient-grouped splits, decoded cache, transforms."""

from pneumonia.data.datamodule import BadImagesError, ChestXRayDataModule, ChestXRayDataset
from pneumonia.data.scan import DataLayoutError
from pneumonia.data.synthetic import ensure_synthetic_dataset, generate_synthetic_dataset

__all__ = [
    "BadImagesError",
    "ChestXRayDataModule",
    "ChestXRayDataset",
    "DataLayoutError",
    "ensure_synthetic_dataset",
    "generate_synthetic_dataset",
]
