"""The project's Hydra configs: where they are, composing them outside a command-line run
(tests, notebooks, scripts), and checking their values before any work."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

import pneumonia.system.launch  # noqa: F401  (the configs' resolvers: run folders shared by DDP ranks)
from pneumonia.data.images import is_upscale_limit
from pneumonia.data.preprocessing import Preprocessing
from pneumonia.decision.shift import METHODS as SHIFT_METHODS
from pneumonia.errors import InputNotFoundError, InputValueError


def _config_dir() -> Path:
    """The configs: inside the installed package (a wheel ships ``conf/`` as
    ``pneumonia/conf``), else the checkout's top-level ``conf/`` (a source tree or an editable
    install)."""
    here = Path(__file__).resolve().parent
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


# ----------------------------------------------------------------------------- value checks
class ConfigValueError(InputValueError):
    """Config values of the wrong type or out of range, each named by its key."""


def _number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _integer(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _rule(test, wanted: str):
    return lambda v: None if test(v) else wanted


POSITIVE = _rule(lambda v: _number(v) and v > 0, "a positive number")
NON_NEGATIVE = _rule(lambda v: _number(v) and v >= 0, "a number >= 0")
FRACTION = _rule(lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)")
PROBABILITY = _rule(lambda v: _number(v) and 0 <= v <= 1, "a number in [0, 1]")
OPEN_UNIT = _rule(lambda v: _number(v) and 0 < v < 1, "a number strictly between 0 and 1")
FLAG = _rule(lambda v: isinstance(v, bool), "true or false")


def _one_of(valid: tuple[str, ...]):
    return _rule(lambda v: v in valid, f"one of {', '.join(valid)}")


COUNT = _rule(lambda v: _integer(v) and v >= 1, "a whole number >= 1")
OPTIONAL_COUNT = _rule(
    lambda v: v is None or (_integer(v) and v >= 1), "null or a whole number >= 1"
)
WORKERS = _rule(lambda v: v is None or (_integer(v) and v >= 0), "null or a whole number >= 0")
OPTIONAL_UPSCALE = _rule(lambda v: v is None or is_upscale_limit(v), "null or a number >= 1")
OPTIONAL_PREVALENCE = _rule(
    lambda v: v is None or (_number(v) and 0 < v < 1), "null or a number strictly between 0 and 1"
)

TRAIN_RULES = {
    "seed": _rule(_integer, "a whole number"),
    "model.lr": POSITIVE,
    "model.lr_batch_size": OPTIONAL_COUNT,
    "model.weight_decay": NON_NEGATIVE,
    "model.momentum": FRACTION,
    "model.label_smoothing": FRACTION,
    "model.unfreeze_lr_ratio": POSITIVE,
    "model.cost_ratio": POSITIVE,
    "model.prevalence": OPEN_UNIT,
    "model.target_sensitivity": _rule(lambda v: _number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "data.batch_size": COUNT,
    "data.eval_batch_size": OPTIONAL_COUNT,
    "data.num_workers": WORKERS,
    "data.val_fraction": OPEN_UNIT,
    "data.resize_size": COUNT,
    "data.crop_size": COUNT,
    "data.rotation_degrees": NON_NEGATIVE,
    "data.translate": FRACTION,
    "data.hflip_prob": PROBABILITY,
    "data.max_pixels": COUNT,
    "data.augment.crop_scale": _rule(lambda v: _number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "data.augment.brightness": NON_NEGATIVE,
    "data.augment.contrast": NON_NEGATIVE,
    "data.augment.gamma": NON_NEGATIVE,
    "data.augment.blur_prob": PROBABILITY,
    "data.augment.noise_std": NON_NEGATIVE,
    "trainer.max_epochs": _rule(
        lambda v: v is None or (_integer(v) and (v >= 1 or v == -1)),
        "a whole number >= 1 (or -1 for no limit)",
    ),
    "trainer.max_steps": _rule(
        lambda v: _integer(v) and (v >= 1 or v == -1), "a whole number >= 1 (or -1 for no limit)"
    ),
    "trainer.accumulate_grad_batches": COUNT,
    # the checks and the shift reference run after training: a typo there would cost a run
    "checks.enabled": FLAG,
    "checks.degraded": FLAG,
    "checks.resamples": COUNT,
    "shift.enabled": FLAG,
    "shift.method": _one_of(SHIFT_METHODS),
    "shift.flag_rate": OPEN_UNIT,
}
EVALUATE_RULES = {
    "batch_size": COUNT,
    "data.num_workers": WORKERS,
    "bootstrap.resamples": COUNT,
    "bootstrap.confidence": OPEN_UNIT,
    "prevalence": OPTIONAL_PREVALENCE,
    "subgroups.min_size": COUNT,
    "mistakes": WORKERS,
    "max_upscale": OPTIONAL_UPSCALE,
}
PREDICT_RULES = {"batch_size": COUNT, "max_upscale": OPTIONAL_UPSCALE}
_MISSING = object()


def _problems(cfg: DictConfig, rules: dict) -> list[str]:
    problems = []
    for key, rule in rules.items():
        value = OmegaConf.select(cfg, key, default=_MISSING)
        if value is _MISSING:
            continue
        wanted = rule(value)
        if wanted:
            problems.append(f"  {key}={value!r}: must be {wanted}")
    return problems


def _raise(problems: list[str]) -> None:
    if problems:
        raise ConfigValueError(
            "Config values that cannot work (fix them on the command line or in the config):\n"
            + "\n".join(problems)
        )


def check_values(cfg: DictConfig, rules: dict) -> None:
    """Every problem of ``cfg`` under ``rules`` (key -> check), reported in one error.

    Raises:
        ConfigValueError: naming each key, its value and what it must be.
    """
    _raise(_problems(cfg, rules))


def check_train_config(cfg: DictConfig) -> None:
    """Types and ranges of a training config, before any data is read or model built: the
    rules above, and the preprocessing's own checks (:class:`Preprocessing`)."""
    problems = _problems(cfg, TRAIN_RULES)
    data, model, trainer = cfg.get("data", {}), cfg.get("model", {}), cfg.get("trainer", {})
    if not problems:
        given = {f.name: data[f.name] for f in fields(Preprocessing) if f.name in data}
        try:
            Preprocessing(**given)
        except ValueError as e:
            problems.append(f"  {e}")
    unbounded = trainer.get("max_epochs") in (-1, None) and trainer.get("max_steps", -1) == -1
    if model.get("scheduler") == "onecycle" and unbounded and not trainer.get("max_time"):
        problems.append(
            "  model.scheduler=onecycle needs a run of known length: set trainer.max_epochs, "
            "trainer.max_steps or trainer.max_time (trainer.max_epochs=-1 runs without end)."
        )
    _raise(problems)
