"""The project's Hydra configs: where they are, composing them outside a command-line run
(tests, notebooks, scripts), and checking their values before any work
(:mod:`pneumonia.config.checks`, whose names this module also offers)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

import pneumonia.system.launch  # noqa: F401  (the configs' resolvers: run folders shared by DDP ranks)
from pneumonia.errors import InputNotFoundError


def _config_dir() -> Path:
    """The configs: inside the installed package (a wheel ships ``conf/`` as
    ``pneumonia/conf``), else the checkout's top-level ``conf/`` (a source tree or an editable
    install)."""
    here = Path(__file__).resolve().parent.parent  # pneumonia/
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(
        f"The pneumonia configs are neither in {here / 'conf'} nor in {here.parent / 'conf'}: "
        "reinstall the package (pip install pneumonia, or pip install -e . in a checkout)."
    )


# Every command (@hydra.main) and compose() read the configs from here.
CONFIG_DIR = _config_dir()


def compose(
    config_name: str = "train",
    overrides: Sequence[str] = (),
    *,
    output_dir: str | Path | None = None,
    config_dir: str | Path | None = None,
) -> DictConfig:
    """The config ``pneumonia-<config_name> <overrides>`` would run with (Hydra's own order:
    the config's name, then the overrides).

    Args:
        output_dir: the run folder (``paths.output_dir``). Given, the result is a plain job
            config without the ``hydra`` node, ready for ``train(cfg)`` and friends; without
            it, the ``hydra`` node stays (for instance to read where runs go).
        config_dir: a folder of your own configs, searched before the package's, as the
            commands' ``--config-dir`` adds it (``experiment/mine.yaml`` there is
            ``experiment=mine``).
    """
    if not isinstance(config_name, str):
        raise TypeError(
            f"compose(config_name, overrides): config_name must be a name such as 'train', "
            f"got {config_name!r}; pass the overrides second: compose('train', [...])"
        )
    overrides = list(overrides)
    if config_dir is not None:
        folder = Path(config_dir).expanduser().resolve()
        if not folder.is_dir():
            raise InputNotFoundError(f"config_dir={folder} is not a folder")
        overrides.append(f"hydra.searchpath=[file://{folder}]")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = hydra_compose(
                config_name=config_name, overrides=overrides, return_hydra_config=True
            )
    finally:
        GlobalHydra.instance().clear()
    HydraConfig.instance().set_config(cfg)  # ${hydra:...} interpolations resolve against it
    if output_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
            del cfg.hydra
    return cfg


def flatten(tree: Any, sep: str = "/", prefix: str = "") -> dict[str, Any]:
    """The one flattener: nested mappings -> one level, keys joined by ``sep``
    (``{"model/lr": 1e-4, ...}``), leaves as they are; Hydra's own ``hydra`` node left out.
    A config's parameters for loggers are :func:`as_params`, a metrics.json's numbers
    ``pneumonia.runs.aggregation.flatten_metrics``."""
    if isinstance(tree, Mapping):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            if k != "hydra":
                out |= flatten(v, sep, f"{prefix}{k}{sep}")
        return out
    return {prefix.removesuffix(sep): tree}


def as_params(tree: Any) -> dict[str, bool | int | float | str]:
    """A config flat (``model/lr``), with the leaf values TensorBoard and MLflow take: null as
    "null", lists and other values as their text."""
    return {
        key: "null" if value is None else value if isinstance(value, bool | int | float | str)
        else str(value)
        for key, value in flatten(tree).items()
    }  # fmt: skip


__all__ = [
    "CONFIG_DIR", "EVALUATE_ONLY_WITH", "EVALUATE_RULES", "PREDICT_RULES", "RECALIBRATE_RULES",
    "SERVE_RULES", "TRAIN_ONLY_WITH", "TRAIN_RULES", "ConfigValueError", "as_params",
    "check_train_config", "check_values", "compose", "flatten", "without_effect",
]  # fmt: skip

from pneumonia.config.checks import (  # noqa: E402  (the names callers import from here)
    EVALUATE_ONLY_WITH,
    EVALUATE_RULES,
    PREDICT_RULES,
    RECALIBRATE_RULES,
    SERVE_RULES,
    TRAIN_ONLY_WITH,
    TRAIN_RULES,
    ConfigValueError,
    check_train_config,
    check_values,
    without_effect,
)
