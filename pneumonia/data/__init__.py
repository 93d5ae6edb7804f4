"""Chest X-ray data: folder index, usable images, patient-grouped splits, decoded cache,
preprocessing, the DataModule."""

from pneumonia.data.datamodule import ChestXRayDataModule
from pneumonia.data.dataset import ChestXRayDataset
from pneumonia.data.index import DataIndex, DataLayoutError
from pneumonia.data.leakage import LeakageError
from pneumonia.data.preprocessing import Preprocessing, PreprocessingError
from pneumonia.data.synthetic import ensure_synthetic_dataset, generate_synthetic_dataset
from pneumonia.data.usable import BadImagesError

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
