"""Which configs are measured before a sweep (tuner.footprints): past the cap, the largest of each model and every
model are still measured; probes see data at the stored size, as trials do; sampled batch sizes are checked."""

from __future__ import annotations

import dataclasses
import itertools
from types import SimpleNamespace

import pytest
from ray import tune

from tests.conftest import probe_in_fresh_process
from tuner import footprints, packing
from tuner.spec import build_spec

VIT_KEYS = ("vit_patch", "vit_depth", "vit_dim", "vit_heads", "vit_mlp_dim")


def shape(config, keys):
    return tuple(config.get(k) for k in keys)


def test_vit_scratch_measures_its_largest_vit_and_every_value_of_every_knob():
    spec = build_spec(space="vit_scratch", dataset="cifar100")  # 3 x 4 x 3 x 2 x 4 = 288 combinations
    configs = packing.memory_configs(spec)
    assert len(configs) == packing.MAX_MEASURED  # the cap holds: measuring takes a training step each
    shapes = {shape(c, VIT_KEYS) for c in configs}
    assert (2, 12, 384, 8, 1536) in shapes  # the largest ViT: smallest patch, deepest, widest, most heads, MLP
    params = spec.search_space.params
    for key in VIT_KEYS:  # each value at least once, so a patch 8 or a depth 4 ViT is built and measured too
        assert {c[key] for c in configs} == set(params[key].categories), key


def test_the_largest_measured_is_the_largest_the_space_samples():
    """Brute force over the whole product: the config with the largest estimate is always among those measured."""
    spec = build_spec(space="vit_scratch", dataset="cifar100")
    params = spec.search_space.params
    every = [dict(zip(VIT_KEYS, combo)) for combo in itertools.product(*(params[k].categories for k in VIT_KEYS))]
    largest = max(every, key=lambda c: footprints.memory_estimate({"model": "vit_scratch", "batch_size": 128, **c}))
    assert shape(largest, VIT_KEYS) in {shape(c, VIT_KEYS) for c in packing.memory_configs(spec)}


def test_the_estimate_grows_with_every_knob_the_way_memory_does():
    base = {"model": "vit_scratch", "batch_size": 64, "vit_patch": 4, "vit_depth": 6, "vit_dim": 192,
            "vit_heads": 4, "vit_mlp_dim": 768, "opt": "adamw"}
    est = footprints.memory_estimate
    for key, bigger in (("vit_patch", 2), ("vit_depth", 8), ("vit_dim", 384), ("vit_heads", 8),
                        ("vit_mlp_dim", 1536), ("batch_size", 128)):
        assert est({**base, key: bigger}) > est(base), key
    cnn = {"model": "resnet18", "batch_size": 64, "width": 0.5, "image_size": 32, "opt": "sgd"}
    for key, bigger in (("width", 1.0), ("image_size", 64), ("batch_size", 128), ("opt", "adamw")):
        assert est({**cnn, key: bigger}) > est(cnn), key
    assert est({**cnn, "freeze_backbone": True}) < est(cnn)


def test_efficiency_measures_every_model_at_its_largest():
    spec = build_spec(space="efficiency", dataset="cifar10")  # (2 CNNs x 3 widths + MobileNetV3 + ViT x 3 dims) x 3 sizes
    configs = packing.memory_configs(spec)
    assert len(configs) == packing.MAX_MEASURED
    models = set(spec.search_space.params["model"].categories)
    assert {c["model"] for c in configs} == models  # preflight builds every model
    for model in ("cnn_basic", "resnet18"):  # the models built with width; the others: any width is their largest
        assert {"model": model, "width": 1.0, "image_size": 32}.items() <= \
            next(c for c in configs if (c["model"], c["width"], c["image_size"]) == (model, 1.0, 32)).items()
    assert any(c["model"] == "vit_scratch" and c["image_size"] == 32 and c["vit_dim"] == 192 for c in configs)
    assert any(c["model"] == "mobilenetv3" and c["image_size"] == 32 for c in configs)
    assert {c["width"] for c in configs} == {0.25, 0.5, 1.0} and {c["image_size"] for c in configs} == {16, 24, 32}


def test_a_small_space_is_measured_whole_and_costs_still_see_an_over_the_cap_space():
    small = packing.memory_configs(build_spec(space="cnn_grid", dataset="digits"))
    assert {c["model"] for c in small} == {"cnn_basic", "resnet18", "vit_scratch"} and len(small) == 3
    spec = build_spec(space="efficiency", dataset="cifar10")
    assert len(packing.memory_configs(spec, most=29)) == 29  # tuner.costs counts "more than its cap" this way
    # 30, not 4 x 3 x 3 x 3: a knob a model is not built with (width for the ViT and MobileNetV3, vit_dim for the
    # CNNs) makes no other footprint
    assert len(packing.memory_configs(spec, most=64)) == 30


# --- probes see data at the stored size ------------------------------------------------------------------------------

def test_a_probe_is_keyed_by_the_stored_size_too():
    """A trial at image_size 32 on data stored at 224 px holds 224-px batches: not the footprint of 64-px data."""
    config = {"model": "cnn_basic", "batch_size": 64, "image_size": 32}
    assert packing.footprint(config, 224) != packing.footprint(config, 64)


def test_probes_get_data_at_the_stored_size(monkeypatch, tmp_path):
    """measure_all hands each probe the data's stored size (the probe resizes to the config's image_size, as the
    trial does), never the config's image_size."""
    import ray

    monkeypatch.setenv("SWEEPS_DATA_CACHE", str(tmp_path))
    calls = []
    remote = SimpleNamespace(remote=lambda *args: calls.append(args) or args)
    monkeypatch.setattr(ray, "remote", lambda **kw: lambda fn: remote)
    monkeypatch.setattr(ray, "get", lambda ref: {"peak": 1, "baseline": 0, "gpu_peak": 0})
    spec = build_spec(space="efficiency", dataset="cifar10")
    configs = [{"model": "cnn_basic", "batch_size": 64, "image_size": 32, "width": 0.25}]
    packing.measure_all(spec, configs, 10, 224, 512, 8 * 2 ** 30)
    assert [args[2] for args in calls] == [224]


def test_stored_size_data_costs_memory_the_probe_now_measures():
    """For real, each in a fresh process (VmHWM never goes down): the same config (image_size 16) on data stored at
    96 px peaks higher than on 16-px data (its batch and the 512-image validation batch, as float, are held at
    96 px before the resize)."""
    def peak(stored: int) -> int:
        config = {"model": "cnn_basic", "width": 0.25, "batch_size": 64, "image_size": 16}
        return probe_in_fresh_process(config, 10, stored, 512)["peak"]

    float_val_batch = 512 * 3 * 96 * 96 * 4
    assert peak(96) - peak(16) > float_val_batch / 3  # measured: ~40 MiB more (54 MiB of float validation)


# --- sampled batch sizes ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("domain,largest", [
    (tune.choice([32, 64, 2048]), 2048),
    (tune.randint(16, 4097), 4096),  # randint's upper bound is exclusive
    (tune.qrandint(32, 2048, 32), 2048),
    ({"grid_search": [64, 1500]}, 1500),
])
def test_a_sampled_batch_size_larger_than_the_training_split_is_refused(domain, largest):
    spec = build_spec(space="resnet_rsb", dataset="digits")
    spec = dataclasses.replace(spec, overrides={**spec.overrides, "batch_size": domain})
    with pytest.raises(packing.UserError, match=rf"batch_size {largest} \(the largest the space samples\) exceeds "
                                                r"the 1293 training images"):
        packing.check_batch_sizes(spec, 1293)
    packing.check_batch_sizes(spec, largest)  # a split that holds the largest batch passes


def test_a_knob_a_model_is_not_built_with_makes_no_other_footprint():
    from tuner.footprints import footprint_of

    keys = ("model", "width", "vit_dim", "image_size")
    vit = {"model": "vit_scratch", "width": 0.25, "vit_dim": 64, "image_size": 32}
    assert footprint_of(vit, keys) == footprint_of({**vit, "width": 1.0}, keys)
    assert footprint_of(vit, keys) != footprint_of({**vit, "vit_dim": 128}, keys)
    cnn = {"model": "resnet18", "width": 0.25, "vit_dim": 64, "image_size": 32}
    assert footprint_of(cnn, keys) == footprint_of({**cnn, "vit_dim": 192}, keys)
    assert footprint_of(cnn, keys) != footprint_of({**cnn, "width": 0.5}, keys)
    timm_net = {"model": "mobilenetv3", "width": 0.25, "vit_dim": 64, "image_size": 32}
    assert footprint_of(timm_net, keys) == footprint_of({**timm_net, "width": 1.0, "vit_dim": 128}, keys)
