"""What a trial would reject is refused before the sweep starts: an image size a model cannot take (every model x
image size the space can sample, run on a two-image batch), a batch larger than the training split."""

import dataclasses
import math
import re

import pytest

from tests.conftest import REPO, run_cli
from trainables.errors import UserError
from tuner.dryrun import preflight_models
from tuner.spec import build_spec


def test_an_image_size_a_model_cannot_take_is_one_line():
    spec = build_spec(space="resnet_rsb", dataset="digits", sets=["model=vgg16_bn", "image_size=16", "width=0.25"])
    with pytest.raises(UserError, match=r"model vgg16_bn cannot take 16px images \(RuntimeError: .*too small"):
        preflight_models(spec, 10, 32)


def test_every_sampled_model_and_size_is_run():
    spec = build_spec(space="cnn_grid", dataset="digits")  # cnn_basic, resnet18, vit_scratch at 16 px
    preflight_models(spec, 10, 32)


@pytest.mark.integration
def test_cli_refuses_before_anything_runs(tmp_path):
    """Both checks through the command line: one error line, exit 2, no sweep folder, no trial started."""
    for sets, needle in ((["model=cnn_basic", "image_size=4"], "model cnn_basic cannot take 4px images"),
                         (["model=cnn_basic", "width=0.25", "batch_size=4096"],
                          "batch_size 4096 exceeds the 1293 training images")):
        args = [arg for s in sets for arg in ("--set", s)]
        proc = run_cli("--space", "resnet_rsb", "--dataset", "digits", *args, "--num-samples", "1",
                       "--storage", str(tmp_path / "s"), "--mlflow-uri", f"sqlite:///{tmp_path / 'm.db'}",
                       cwd=REPO, timeout=300)
        out = " ".join(proc.stdout.split())
        assert proc.returncode == 2 and f"error: {needle}" in out, proc.stdout + proc.stderr
        assert "Traceback" not in proc.stdout + proc.stderr
        assert not list(tmp_path.glob("s/*/sweep.json"))


@pytest.mark.parametrize("settings,nodes,needle", [
    ({"threads": 8}, [{"CPU": 2.0}], "--cost-threads 8 but the Ray cluster's largest node has 2 CPU(s); pass "
                                     "--cost-threads 2 or less"),
    ({"threads": 3}, [{"CPU": 2.0}, {"CPU": 2.0}], "--cost-threads 3 but the Ray cluster's largest node has 2"),
    ({"device": "cuda"}, [{"CPU": 16.0}], "--cost-device cuda: the Ray cluster has no GPU"),
    ({"device": "cuda"}, [{"CPU": 0.0, "GPU": 1.0}, {"CPU": 4.0}], "--cost-device cuda: the Ray cluster has no GPU"),
])
def test_a_cost_measurement_no_node_can_run_is_one_line(settings, nodes, needle):
    """Ray would leave the measuring task pending forever: refused up front instead."""
    from tuner.costs import CostSettings, check_cost_resources

    with pytest.raises(UserError) as caught:
        check_cost_resources(CostSettings(**settings), nodes)
    assert needle in str(caught.value) and "\n" not in str(caught.value), str(caught.value)


def test_a_cost_measurement_one_node_can_run_passes():
    from tuner.costs import CostSettings, check_cost_resources

    check_cost_resources(CostSettings(threads=4), [{"CPU": 2.0}, {"CPU": 4.0}])
    check_cost_resources(CostSettings(device="cuda"), [{"CPU": 8.0, "GPU": 1.0}])


@pytest.mark.integration
def test_a_cost_measurement_never_scheduled_times_out(monkeypatch):
    """On a real local Ray: too many threads is refused at once; a task waiting for CPUs other work holds ends
    with an error line after the timeout, not a hang."""
    import ray

    from tuner import costs

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        config = {"model": "cnn_basic", "width": 0.25, "image_size": 16}
        with pytest.raises(UserError, match="--cost-threads 2 but the Ray cluster's largest node has 1 CPU"):
            costs.measure_remote([config], 10, 16, costs.CostSettings(threads=2))

        @ray.remote(num_cpus=1)
        class Busy:  # holds the only CPU
            def ping(self) -> int:
                return 1

        busy = Busy.remote()
        ray.get(busy.ping.remote())
        monkeypatch.setattr(costs, "COST_TIMEOUT_S", 3)
        monkeypatch.setattr(costs, "COST_TIMEOUT_PER_FOOTPRINT_S", 0)
        with pytest.raises(UserError, match=r"did not finish in 3 s; the Ray task may have waited for 1 CPU\(s\)"):
            costs.measure_remote([config], 10, 16, costs.CostSettings(threads=1))
    finally:
        ray.shutdown()


@pytest.mark.parametrize("layout,size", [("NHWC", 24), ("NCHW", 16), ("NHW", 20)])
def test_dry_run_reads_an_npz_datasets_classes_and_size(tmp_path, layout, size):
    """Not the 100 classes at 64 px assumed for unknown data: the .npz's own, from its headers and labels."""
    from rich.console import Console

    from tests.conftest import write_npz
    from trainables.data import npz_shape
    from trainables.models import count_parameters, create_model
    from tuner.dryrun import dry_run

    path = write_npz(tmp_path / "mine.npz", layout, size=size)
    assert npz_shape(path) == (10, size)
    assert npz_shape(tmp_path) == (10, size)  # the folder holding it, as load_dataset takes it
    (tmp_path / "named").mkdir()
    named = write_npz(tmp_path / "named" / "x.npz", layout, size=size, classes=[f"c{i}" for i in range(12)])
    assert npz_shape(named) == (12, size)  # more names than labels used: the names count, as when loading

    spec = build_spec(space="resnet_rsb", dataset="npz", data_dir=str(path), sets=["model=cnn_basic", "width=0.25"])
    console = Console(width=200, record=True)
    rows = dry_run(spec, console, samples=1)
    out = console.export_text()
    assert re.search(rf"│\s+{size} │", out) and "assumed" not in out, out
    assert rows[0]["parameters"] == count_parameters(create_model("cnn_basic", 10, width=0.25))  # a 10-class head


def test_dry_run_says_what_it_assumes_and_refuses_an_unreadable_npz(tmp_path):
    from rich.console import Console

    from tuner.dryrun import dry_run

    (tmp_path / "bad.npz").write_text("not a zip")
    spec = build_spec(space="resnet_rsb", dataset="npz", data_dir=str(tmp_path / "bad.npz"), sets=["width=0.25"])
    with pytest.raises(UserError, match=r"bad.npz is not a readable .npz \(BadZipFile: "):
        dry_run(spec, Console(width=200), samples=1)
    spec = build_spec(space="resnet_rsb", dataset="npz", sets=["model=cnn_basic", "width=0.25"])
    console = Console(width=200, record=True)
    dry_run(spec, console, samples=1)
    assert "npz: classes and image size not read from the files: assumed 100 classes at 64px" in console.export_text()


def test_warm_start_of_a_multi_objective_sweep_prefers_the_earlier_pareto_front(tmp_path):
    """--warm-start runs the source's feasible Pareto front first (not just its most accurate trials), then its other
    feasible trials, then the rest, each by val top-1; a single-objective sweep still ranks by val top-1 alone."""
    from trainables.config import TrialConfig
    from tuner.experiment import warm_start_points
    from tuner.folder import SweepFolder

    source = SweepFolder(tmp_path / "earlier")
    source.path.mkdir()
    base = {**TrialConfig().to_dict(), "model": "cnn_basic", "width": 0.25, "image_size": 16, "weight_decay": 0.01}
    trials = [  # (trial, val top-1, feasible, pareto, lr): the most accurate ones break the latency budget
        ("slow_best", 0.95, False, False, 1e-3), ("slow_good", 0.93, False, False, 2e-3),
        ("front_a", 0.80, True, True, 3e-3), ("dominated", 0.85, True, False, 4e-3),
        ("front_b", 0.90, True, True, 5e-3), ("failed", math.nan, True, False, 6e-3)]
    source.write_trials([{**base, "trial_id": t, "status": "finished" if t != "failed" else "error",
                          "best_val_top1": top1, "feasible": feasible, "pareto": pareto, "lr": lr,
                          "cost_latency_ms": 1.0} for t, top1, feasible, pareto, lr in trials])

    spec = build_spec(space="efficiency", dataset="digits", storage=str(tmp_path / "s"), warm_start=str(source.path),
                      num_samples=20)
    assert spec.multi_objective
    # the front by top-1, the other feasible trial, then the rest; the failed trial not at all
    assert [p["lr"] for p in warm_start_points(spec)] == [5e-3, 3e-3, 4e-3, 1e-3, 2e-3]
    single = dataclasses.replace(spec, objectives=("val_top1",), constraints=())
    assert [p["lr"] for p in warm_start_points(single)] == [1e-3, 2e-3, 5e-3, 4e-3, 3e-3]
