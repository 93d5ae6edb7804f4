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
