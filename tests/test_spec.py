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


@pytest.mark.parametrize("target,needle", [
    ("val_top1=200", "--stop-at 'val_top1=200': val_top1 is a percentage, so the target must lie in [0, 100], got 200"),
    ("best_val_top1=-1", "best_val_top1 is a percentage, so the target must lie in [0, 100], got -1"),
    ("val_top5=100.5", "val_top5 is a percentage, so the target must lie in [0, 100], got 100.5"),
    ("val_loss=-0.1", "--stop-at 'val_loss=-0.1': val_loss is a loss, so the target must be >= 0, got -0.1"),
])
def test_a_stop_at_target_out_of_the_metric_range_is_refused(target, needle):
    with pytest.raises(UserError) as caught:
        spec(stop_at=target)
    assert str(caught.value) == needle or needle in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("target", ["val_top1=100", "val_top1=0", "val_top5=99.5", "train_loss=0", "val_loss=3.2"])
def test_a_stop_at_target_in_range_is_taken(target):
    assert spec(stop_at=target).stop_at == target


def test_dataset_of_a_second_stage_in_any_case():
    """--dataset MNIST for a two-stage space: both stages' data set as --dataset takes it."""
    two_stage = next(name for name, space in SPACES.items() if space.then is not None)
    s = build_spec(space=two_stage, dataset="MNIST", storage="/tmp/unused-storage", dry_run=True)
    assert (s.dataset, s.then_dataset) == ("mnist", "mnist")
