"""Chest X-ray data: folder index, patient-grouped splits, decoded cache, preprocessing."""

from pneumonia.data.datamodule import ChestXRayDataModule
from pneumonia.data.dataset import ChestXRayDataset, Preprocessing, PreprocessingError
from pneumonia.data.index import BadImagesError, DataIndex, DataLayoutError
from pneumonia.data.leakage import LeakageError
from pneumonia.data.synthetic import ensure_synthetic_dataset, generate_synthetic_dataset

__all__ = [
    "BadImagesError",
    "ChestXRayDataModule",
    "ChestXRayDataset",
    "DataIndex",
    "DataLayoutError",
    "LeakageError",
    "Preprocessing",
    "PreprocessingError",
    "ensure_synthetic_dataset",
    "generate_synthetic_dataset",
]
