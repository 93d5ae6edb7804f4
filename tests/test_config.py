"""The configs: every default written once, in the code or in the YAML that mirrors it."""

from __future__ import annotations

import inspect

import pytest
from omegaconf import OmegaConf

from pneumonia.config import CONFIG_DIR, compose
from pneumonia.data import ChestXRayDataModule, Preprocessing
from pneumonia.data.transforms import GEOMETRY, Augmentation
from pneumonia.decision.metrics import BOOTSTRAP_RESAMPLES, CONFIDENCE
from pneumonia.decision.shift import FLAG_RATE, METHODS
from pneumonia.decision.subgroups import MIN_SUBGROUP
from pneumonia.evaluation import EVALUATE_BATCH_SIZE
from pneumonia.evaluation.scoring import EVALUATE_DATA_KEYS
from pneumonia.inference.runner import PREDICT_BATCH_SIZE
from pneumonia.models.classifier import PneumoniaClassifier


def literal_values(path: str) -> dict:
    """The YAML's own values, leaving out interpolations (``${...}``) and required ones."""
    raw = OmegaConf.load(CONFIG_DIR / path)
    return {
        key: OmegaConf.to_container(raw[key]) if OmegaConf.is_config(raw[key]) else raw[key]
        for key in raw
        if not OmegaConf.is_interpolation(raw, key)
        and not OmegaConf.is_missing(raw, key)
        and key not in ("_target_", "defaults")
    }


def defaults_of(fn) -> dict:
    return {
        name: p.default
        for name, p in inspect.signature(fn).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def normalise(value):
    return list(value) if isinstance(value, tuple) else value


@pytest.mark.parametrize(
    ("yaml", "fn"),
    [("data/chest_xray.yaml", ChestXRayDataModule), ("model/classifier.yaml", PneumoniaClassifier)],
)
def test_each_config_mirrors_the_defaults_of_what_it_instantiates(yaml: str, fn) -> None:
    values, defaults = literal_values(yaml), defaults_of(fn)
    assert set(values) <= set(inspect.signature(fn).parameters), "keys the code does not take"
    differ = {
        key: (value, normalise(defaults[key]))
        for key, value in values.items()
        if key in defaults and key != "augment" and value != normalise(defaults[key])
    }
    assert not differ, f"{yaml} and {fn.__name__} disagree (yaml, code): {differ}"


def test_the_augment_keys_mirror_the_augmentation_and_are_all_off() -> None:
    augment = literal_values("data/chest_xray.yaml")["augment"]
    defaults = {k: v for k, v in defaults_of(Augmentation).items() if k not in GEOMETRY}
    assert augment == defaults  # every acquisition change is in the config, at its default
    assert all(v == 0 for k, v in augment.items() if k != "crop_scale")


def test_the_datamodules_preprocessing_defaults_are_the_preprocessings_own() -> None:
    defaults = defaults_of(ChestXRayDataModule)
    for key, value in Preprocessing().to_dict().items():
        assert normalise(defaults[key]) == value, key


def test_the_commands_configs_mirror_the_library_constants() -> None:
    """Every value a command's YAML repeats from the library, held equal to its one source."""
    evaluate, predict, train = (compose(name) for name in ("evaluate", "predict", "train"))
    assert evaluate.batch_size == EVALUATE_BATCH_SIZE
    assert evaluate.bootstrap.resamples == BOOTSTRAP_RESAMPLES
    assert evaluate.bootstrap.confidence == CONFIDENCE
    assert evaluate.subgroups.min_size == MIN_SUBGROUP
    assert tuple(evaluate.data) == EVALUATE_DATA_KEYS  # the data keys evaluation takes over
    assert predict.batch_size == PREDICT_BATCH_SIZE
    assert train.checks.resamples == BOOTSTRAP_RESAMPLES
    assert train.shift.flag_rate == FLAG_RATE
    assert train.shift.method in METHODS


# ------------------------------------------------------------------ settings without effect
def test_the_defaults_of_keys_that_act_only_with_another_are_the_configs_own() -> None:
    from pneumonia.config import EVALUATE_ONLY_WITH, TRAIN_ONLY_WITH

    train, evaluate = compose("train"), compose("evaluate", ["ckpt_path=x"])
    for cfg, rules in ((train, TRAIN_ONLY_WITH), (evaluate, EVALUATE_ONLY_WITH)):
        for key, (default, _acts, _needs) in rules.items():
            assert OmegaConf.select(cfg, key) == default, key


@pytest.mark.parametrize(
    ("overrides", "refused"),
    [
        (["data.fold=1"], "data.fold=1"),
        (["data.fold=0"], "data.fold=0"),  # the first job of data.fold=0,1,2: given, so refused
        (["data.folds=5", "data.val_fraction=0.2"], "data.val_fraction=0.2"),
        (["data.folds=5", "data.val_split=official"], "data.val_split='official'"),
        (["data.cache=false", "data.cache_dir=/c"], "data.cache_dir='/c'"),
        (["model.unfreeze_at_epoch=2"], "model.freeze_backbone=true"),
        (["model.momentum=0.5"], "model.optimizer=sgd"),
        (["model.threshold_rule=f1", "model.cost_ratio=3"], "model.threshold_rule=bayes"),
        (["model.target_sensitivity=0.9"], "model.threshold_rule=sensitivity"),
        (["model.lr_scaling=linear"], "model.lr_batch_size"),
        (["data.augment.crop_scale=0.5"], "data.crop=random_resized"),
        (["checks.enabled=false", "checks.resamples=100"], "checks.resamples=100"),
        (["shift.enabled=false", "shift.method=knn"], "shift.method='knn'"),
    ],
)
def test_a_setting_that_does_nothing_is_refused_before_any_work(overrides, refused) -> None:
    from pneumonia.config import ConfigValueError, check_train_config

    cfg = compose("train", overrides, output_dir="unused")
    with pytest.raises(ConfigValueError, match="does nothing here") as info:
        check_train_config(cfg)
    assert refused in str(info.value)


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["data.folds=5", "data.fold=4"],
        ["model.freeze_backbone=true", "model.unfreeze_at_epoch=2", "model.unfreeze_lr_ratio=0.2"],
        ["model.optimizer=sgd", "model.momentum=0.5"],
        ["model.threshold_rule=sensitivity", "model.target_sensitivity=0.9"],
        ["checks.enabled=false"],
        *([f"experiment={p.stem}"] for p in sorted((CONFIG_DIR / "experiment").glob("*.yaml"))),
    ],
)
def test_settings_with_their_partner_and_every_shipped_experiment_pass(overrides) -> None:
    from pneumonia.config import check_train_config

    check_train_config(compose("train", overrides, output_dir="unused"))


def test_evaluate_refuses_a_holdout_folder_it_would_not_read() -> None:
    from pneumonia.config import EVALUATE_ONLY_WITH, EVALUATE_RULES, ConfigValueError, check_values

    cfg = compose("evaluate", ["ckpt_path=x", "data.holdout_root=/h"], output_dir="unused")
    with pytest.raises(ConfigValueError, match="acts only with split=holdout"):
        check_values(cfg, EVALUATE_RULES, EVALUATE_ONLY_WITH)
    cfg = compose("evaluate", ["ckpt_path=x", "split=holdout", "data.holdout_root=/h"])
    check_values(cfg, EVALUATE_RULES, EVALUATE_ONLY_WITH)
