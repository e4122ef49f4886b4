"""Sweep spec: layering of space, data-set adjustments and --set; every user mistake is a UserError."""

import pytest
from ray.tune.search.sample import Domain

from search_spaces import SPACES
from trainables.config import TrialConfig
from trainables.errors import UserError
from tuner.spec import build_spec, sample_configs


def spec(**kw):
    return build_spec(**{"space": "resnet_rsb", "dataset": "digits", "storage": "/tmp/unused-storage", **kw})


def test_layering_dataset_overrides_then_budget_then_sets():
    s = spec(max_epochs=3, sets=["lr=0.002", "width=0.5"])
    space = s.param_space()
    assert space["model"] == "resnet50"  # space fixed
    assert space["image_size"] == 16  # digits adjustment
    assert space["width"] == 0.5  # --set beats the digits adjustment
    assert space["lr"] == 0.002 and "lr" not in s.searched_keys()  # --set pins a searched key
    assert space["max_epochs"] == 3
    assert isinstance(space["opt"], Domain) and "opt" in s.searched_keys()


def test_defaults_come_from_the_space():
    s = build_spec(space="resnet_rsb", storage="/tmp/x")
    rsb = SPACES["resnet_rsb"]
    assert (s.dataset, s.num_samples, s.max_epochs) == (rsb.dataset, rsb.num_samples, rsb.max_epochs)


def test_sampled_configs_are_valid_trial_configs():
    for config in sample_configs(spec(), 10):
        TrialConfig.from_dict(config)


@pytest.mark.parametrize("kwargs,needle", [
    ({"space": "resnet_rbs"}, "unknown space 'resnet_rbs'; known spaces: "),
    ({"dataset": "imagenet21k"}, "unknown dataset 'imagenet21k'"),
    ({"num_samples": 0}, "--num-samples must be a positive integer"),
    ({"max_epochs": -2}, "--max-epochs must be a positive integer"),
    ({"sets": ["lr"]}, "write KEY=VALUE"),
    ({"sets": ["lrr=0.1"]}, "unknown config key 'lrr'"),
    ({"sets": ["batch_size=big"]}, "config key 'batch_size' needs an int"),
    ({"gpus_per_trial": 1.5}, "whole number of GPUs"),
    ({"max_concurrent": 0}, "--max-concurrent must be a positive integer"),
])
def test_user_mistakes(kwargs, needle):
    with pytest.raises(UserError) as info:
        spec(**kwargs)
    assert needle in str(info.value)
