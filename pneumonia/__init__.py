"""pneumonia: PyTorch Lightning + Hydra experiments for chest X-ray pneumonia classification.

The Python API (``pneumonia.compose``, ``pneumonia.load`` and ``pneumonia.Classifier``) lives in
``pneumonia.api``; it is imported on first use, so ``import pneumonia`` stays light.
"""

from pneumonia import _moved

__version__ = "0.1.0"
__all__ = ["Classifier", "compose", "load"]
_moved.install()  # the modules issue 27 moved, under their old names for one release


def __getattr__(name: str):
    if name in __all__:
        from pneumonia import api

        return getattr(api, name)
    raise AttributeError(f"module 'pneumonia' has no attribute {name!r}")
