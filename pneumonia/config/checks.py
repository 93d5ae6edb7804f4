"""A config's values checked before any work: types and ranges (``*_RULES``), and keys that act
only with another key, given without it (``*_ONLY_WITH``). Every problem goes into one error
that names each key, its value and what it must be."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from pneumonia.data.images import is_upscale_limit
from pneumonia.data.preprocessing import Preprocessing
from pneumonia.decision.prior_shift import PRIOR_SHIFTS
from pneumonia.decision.recalibration import REFIT_RULES
from pneumonia.decision.shift import METHODS as SHIFT_METHODS
from pneumonia.errors import InputValueError


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
    "tta": FLAG,
    "prior_shift": _one_of(PRIOR_SHIFTS),
}
PREDICT_RULES = {
    "batch_size": COUNT,
    "max_upscale": OPTIONAL_UPSCALE,
    "tta": FLAG,
    "gradcam": FLAG,
    "prior_shift": _one_of(PRIOR_SHIFTS),
}
SERVE_RULES = {
    "max_upscale": OPTIONAL_UPSCALE,
    "serve.port": _rule(lambda v: _integer(v) and 0 <= v <= 65535, "a port number, 0-65535"),
    "serve.max_upload_mb": POSITIVE,
    "serve.keep_uploads": FLAG,
    "serve.max_batch": COUNT,
    "serve.batch_wait_ms": NON_NEGATIVE,
    "serve.graceful_timeout_s": NON_NEGATIVE,
    "serve.log_requests": FLAG,
    "serve.open": FLAG,
    "serve.backend": _one_of(("torch", "onnx")),
}
RECALIBRATE_RULES = {
    "batch_size": COUNT,
    "data.num_workers": WORKERS,
    "max_upscale": OPTIONAL_UPSCALE,
    "rule": _one_of(REFIT_RULES),
    "prevalence": OPTIONAL_PREVALENCE,
    "folds": _rule(lambda v: _integer(v) and v >= 2, "a whole number >= 2"),
    "seed": _rule(_integer, "a whole number"),
}
_MISSING = object()


# --------------------------------------------------------------------- settings without effect
def _at(key: str, value: Any = True):  # acts when key is value
    return lambda cfg: OmegaConf.select(cfg, key) == value


_set = lambda key: lambda cfg: OmegaConf.select(cfg, key) is not None  # noqa: E731


# A key that only acts with another: key -> (its default, whether it acts in cfg, the other key).
# Given without that other (on the command line, in a sweep, or as a value not its default), the
# run would be the run without it: three "folds" that are one split, a sensitivity nobody reads.
TRAIN_ONLY_WITH = {
    "data.fold": (0, _set("data.folds"), "with data.folds=K (e.g. data.folds=5)"),
    "data.val_fraction": (0.1, lambda c: not _set("data.folds")(c),
                          "without data.folds (a fold is then the validation split)"),
    "data.val_split": ("patient", lambda c: not _set("data.folds")(c),
                       "without data.folds (a fold is then the validation split)"),
    "data.cache_dir": (None, _at("data.cache"), "with data.cache=true"),
    "data.augment.crop_scale": (0.7, _at("data.crop", "random_resized"),
                                "with data.crop=random_resized"),
    "model.unfreeze_at_epoch": (None, _at("model.freeze_backbone"),
                                "with model.freeze_backbone=true"),
    "model.unfreeze_lr_ratio": (0.1, _set("model.unfreeze_at_epoch"),
                                "with model.unfreeze_at_epoch (and model.freeze_backbone=true)"),
    "model.momentum": (0.9, _at("model.optimizer", "sgd"), "with model.optimizer=sgd"),
    "model.lr_scaling": ("auto", _set("model.lr_batch_size"), "with model.lr_batch_size"),
    "model.cost_ratio": (1.0, _at("model.threshold_rule", "bayes"),
                         "with model.threshold_rule=bayes"),
    "model.target_sensitivity": (0.95, _at("model.threshold_rule", "sensitivity"),
                                 "with model.threshold_rule=sensitivity"),
    "checks.degraded": (True, _at("checks.enabled"), "with checks.enabled=true"),
    "checks.resamples": (1000, _at("checks.enabled"), "with checks.enabled=true"),
    "shift.method": ("mahalanobis", _at("shift.enabled"), "with shift.enabled=true"),
    "shift.flag_rate": (0.05, _at("shift.enabled"), "with shift.enabled=true"),
}  # fmt: skip
EVALUATE_ONLY_WITH = {"data.holdout_root": (None, _at("split", "holdout"), "with split=holdout")}


def _overridden() -> set[str]:
    """The keys the command line (or a sweep's job) set, as Hydra recorded them."""
    hydra = HydraConfig.get() if HydraConfig.initialized() else None
    task = OmegaConf.select(hydra, "overrides.task", default=None) if hydra else None
    task = task or []
    return {o.lstrip("+~").split("=", 1)[0] for o in task}


def without_effect(cfg: DictConfig, rules: Mapping[str, tuple]) -> list[str]:
    """The keys of ``rules`` given in ``cfg`` although the key they act with is not."""
    given = _overridden()
    problems = []
    for key, (default, acts, needs) in rules.items():
        value = OmegaConf.select(cfg, key, default=_MISSING)
        if value is _MISSING or acts(cfg) or (key not in given and value == default):
            continue
        problems.append(
            f"  {key}={value!r} does nothing here: it acts only {needs}. Set that, or leave "
            f"{key} out (a run that ignores a setting is the run without it)"
        )
    return problems


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


def check_values(cfg: DictConfig, rules: dict, only_with: Mapping[str, tuple] = {}) -> None:
    """Every problem of ``cfg`` under ``rules`` (key -> check) and ``only_with`` (keys that act
    only with another, :func:`without_effect`), reported in one error.

    Raises:
        ConfigValueError: naming each key, its value and what it must be.
    """
    _raise(_problems(cfg, rules) + without_effect(cfg, only_with))


def check_train_config(cfg: DictConfig) -> None:
    """Types and ranges of a training config, before any data is read or model built: the
    rules above, and the preprocessing's own checks (:class:`Preprocessing`)."""
    problems = _problems(cfg, TRAIN_RULES) + without_effect(cfg, TRAIN_ONLY_WITH)
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
