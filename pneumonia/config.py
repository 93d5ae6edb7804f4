"""The project's Hydra configs, composed outside a command-line run (tests, notebooks, scripts)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

# The @hydra.main entry points find the same folder as "../conf", relative to their module.
CONFIG_DIR = Path(__file__).resolve().parents[1] / "conf"


def compose(
    config_name: str = "train",
    overrides: Sequence[str] = (),
    *,
    output_dir: str | Path | None = None,
) -> DictConfig:
    """The config ``python -m pneumonia.<config_name> <overrides>`` would run with.

    Args:
        output_dir: the run folder (``paths.output_dir``). Given, the result is a plain job
            config without the ``hydra`` node, ready for ``train(cfg)`` and friends; without
            it, the ``hydra`` node stays (for instance to read where runs go).
    """
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = hydra_compose(
                config_name=config_name, overrides=list(overrides), return_hydra_config=True
            )
    finally:
        GlobalHydra.instance().clear()
    HydraConfig.instance().set_config(cfg)  # ${hydra:...} interpolations resolve against it
    if output_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
            del cfg.hydra
    return cfg
