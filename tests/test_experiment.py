"""tuner.experiment: an experiment is new or restored by what its folder holds, and a restored one reports to the
callbacks of the process that restores it, not to the copies Ray pickled into its state (real Ray Tune)."""

from __future__ import annotations

import pickle

import pytest
from ray import tune

from tuner import callbacks, experiment
from tuner.spec import build_spec

pytestmark = pytest.mark.integration


class Recorder(callbacks.DriverCallback):
    role = "recorder"

    def __init__(self) -> None:
        self.results: list[float] = []
        self.started = 0

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started += 1

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.results.append(result["val_top1"])

    def get_state(self):
        return {"started": self.started}

    def set_state(self, state):
        self.started = state["started"]


def flaky(config):
    """Fails until its marker file exists: the experiment ends with the trial errored, and a restore re-runs it."""
    import os

    if not os.path.exists(config["marker"]):
        raise RuntimeError("not yet")
    tune.report({"epoch": 1, "val_top1": 42.0})


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_a_restored_experiment_reports_to_this_processes_callbacks(tmp_path, local_ray):
    from ray.tune.search.basic_variant import BasicVariantGenerator

    spec = build_spec(space="resnet_rsb", dataset="digits", storage=str(tmp_path), name="x", num_samples=1)
    marker = tmp_path / "marker"
    path = tmp_path / "exp"
    first = Recorder()
    grid, _ = experiment.fit(spec, path, flaky, [first], num_samples=1, searcher=BasicVariantGenerator,
                          param_space={"marker": str(marker)})
    assert grid[0].error is not None and first.results == []  # failed every retry
    started_before = first.started
    assert started_before >= 1

    marker.touch()
    second = Recorder()
    grid, _ = experiment.fit(spec, path, flaky, [second], num_samples=1, searcher=BasicVariantGenerator)
    assert grid[0].error is None and grid[0].metrics["val_top1"] == 42.0
    assert second.results == [42.0]  # the live instance was driven
    assert first.results == [] and first.started == started_before  # the earlier one was not
    assert second.started == started_before + 1  # its state came back through get_state / set_state


def test_a_driver_callback_pickles_as_a_reference_to_the_bound_one():
    live = Recorder()
    callbacks.bind([live])
    assert pickle.loads(pickle.dumps(Recorder())) is live
    callbacks.bind([])
    assert not isinstance(pickle.loads(pickle.dumps(Recorder())), Recorder)  # nothing bound: a do-nothing callback
