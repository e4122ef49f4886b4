"""Trial config: every key typed, ranged, and named in its error messages."""

import numpy as np
import pytest

from trainables.config import TrialConfig, parse_value
from trainables.errors import UserError


def test_defaults_validate():
    assert TrialConfig.from_dict({}) == TrialConfig()


@pytest.mark.parametrize("key,text,expected", [
    ("lr", "3e-3", 3e-3), ("batch_size", "64", 64), ("batch_size", "64.0", 64), ("hflip", "false", False),
    ("hflip", "On", True), ("opt", "lamb", "lamb"), ("max_epochs", "7", 7), ("model", "timm/resnet10t", "timm/resnet10t"),
])
def test_parse_value_types(key, text, expected):
    value = parse_value(key, text)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("key,text,needle", [
    ("lr", "fast", "needs a float"), ("batch_size", "6.5", "needs an int"), ("hflip", "maybe", "needs a bool"),
    ("opt", "adam", "allowed values: sgd, adamw, lamb"), ("lr", "-1", "must lie in"), ("lr", "nan", "needs a float"),
    ("label_smoothing", "0.9", "must lie in [0.0, 0.5]"),
])
def test_bad_values_name_key_and_fix(key, text, needle):
    with pytest.raises(UserError) as info:
        parse_value(key, text)
    assert key in str(info.value) and needle in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_key_suggests_close_match():
    with pytest.raises(UserError, match=r"unknown config key 'learning_rat'.*"):
        TrialConfig.from_dict({"learning_rat": 0.1})
    with pytest.raises(UserError, match="did you mean 'weight_decay'"):
        parse_value("weight_decy", "0.1")


def test_numpy_values_from_samplers_are_accepted():
    cfg = TrialConfig.from_dict({"lr": np.float64(0.01), "batch_size": np.int64(32), "hflip": np.bool_(True)})
    assert cfg.lr == 0.01 and cfg.batch_size == 32 and cfg.hflip is True
    assert type(cfg.batch_size) is int


def test_config_round_trips_through_dict():
    cfg = TrialConfig(lr=0.5, opt="sgd", nesterov=True)
    assert TrialConfig.from_dict(cfg.to_dict()) == cfg
