"""pneumonia: PyTorch Lightning + Hydra experiments for chest X-ray pneumonia classification."""

__version__ = "0.1.0"
