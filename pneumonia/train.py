"""``python -m pneumonia.train``: one training run (:func:`pneumonia.runs.training.train`), its
optimized metric returned to Hydra's sweepers."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from pneumonia.config import CONFIG_DIR
from pneumonia.errors import InputValueError
from pneumonia.runs.training import train

__all__ = ["main", "train"]


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Train, and return ``cfg.optimized_metric`` for sweepers."""
    metrics = train(cfg)
    name = cfg.get("optimized_metric")
    if not name or not metrics:
        return None
    if name not in metrics:
        raise InputValueError(
            f"optimized_metric={name} was not logged (the run's metrics.json is written); "
            f"logged: {', '.join(metrics)}"
        )
    return float(metrics[name])


if __name__ == "__main__":
    main()
