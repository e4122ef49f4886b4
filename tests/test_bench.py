"""The benchmark's code paths on tiny settings: well-formed figures, never timed assertions.

The measuring functions that need no Ray run here directly; those that need Ray run once, through
`python -m benchmarks --tiny --json FILE` (a real local Ray instance), whose JSON is checked key by key.
"""

import dataclasses
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from benchmarks import asha_vs_random, augment_vs_torchvision, common, gpu, per_trial_overhead, suite, trainable_vs_bare

TINY = common.SETTINGS["tiny"]


def finite_positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def digits():
    from trainables.data import load_dataset

    return load_dataset("digits")


def test_trainable_vs_bare_without_ray(digits):
    out = trainable_vs_bare.bench_trainable_vs_bare(digits, TINY)
    for key in ("ours_images_per_s", "bare_images_per_s", "ratio", "ratio_min", "ratio_max"):
        assert finite_positive(out[key]), key
    assert out["ratio_min"] <= out["ratio"] <= out["ratio_max"]
    assert out["images"] == TINY.train_images and out["target_ratio"] == 0.95
    assert "ray_trial_images_per_s" not in out  # only with a storage folder (and Ray running)


def test_small_model_comparison(digits):
    settings = dataclasses.replace(TINY, small_rounds=1, small_images=64)
    small = trainable_vs_bare.bench_trainable_vs_bare(digits, settings)["small_model"]
    assert all(finite_positive(small[k]) for k in ("ours_images_per_s", "bare_images_per_s", "ratio"))


def test_augment_vs_torchvision(digits):
    out = augment_vs_torchvision.bench_augment_vs_torchvision(digits, TINY)
    for key in ("ours_images_per_s", "torchvision_images_per_s", "ratio"):
        assert finite_positive(out[key]), key
    assert out["dataloader_workers"] == 1 and isinstance(out["met"], bool)


def test_fixed_work_and_calibration():
    iters = per_trial_overhead.calibrate_work(0.01)
    assert isinstance(iters, int) and iters >= 1
    assert finite_positive(per_trial_overhead.fixed_work(iters))


def test_simulated_asha_fraction():
    few = asha_vs_random.simulate_asha_fraction(12, 6, 1, 2, 2, sweeps=50)
    many = asha_vs_random.simulate_asha_fraction(64, 12, 1, 2, 2, sweeps=50)
    for sim in (few, many):
        assert 0 < sim["p10"] <= sim["mean"] <= sim["p90"] <= 1
    assert many["mean"] < few["mean"]  # more trials and epochs leave ASHA more to cut


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpu_figures_say_not_measured_without_gpu(digits):
    assert gpu.bench_gpu(digits, TINY) == (common.NOT_MEASURED_NO_GPU, common.NOT_MEASURED_NO_GPU)


def test_gpu_code_path_runs_on_cpu(digits):
    """The GPU measurement's code (per-model throughput, packed trials in spawned processes), on the CPU."""
    throughput, packing = gpu.bench_gpu(digits, TINY, device="cpu")
    assert set(throughput["images_per_s"]) == set(TINY.gpu_models)
    assert all(finite_positive(v) for v in throughput["images_per_s"].values())
    assert set(packing["speedup"]) == {str(k) for k in TINY.packing}
    assert packing["speedup"]["1"] == pytest.approx(1.0)
    assert all(finite_positive(v) for v in packing["aggregate_images_per_s"].values())


def test_unknown_figure_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        suite.main(["--only", "nope"])
    assert exit_info.value.code == 2
    assert "unknown figure" in capsys.readouterr().err


@pytest.mark.slow  # minutes: make test-all runs it; the benchmark figures' code is unit-tested above
@pytest.mark.integration
def test_cli_tiny_run_writes_every_figure(tmp_path):
    """`python -m benchmarks --tiny --json FILE` in a real subprocess, with a real local Ray instance."""
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update({"PYTHONUNBUFFERED": "1", "COLUMNS": "160"})
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--tiny", "--json", str(out)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "Figures" in proc.stdout and "per_trial_overhead_s" in proc.stdout
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()  # nothing tracked
    result = json.loads(out.read_text())

    for key in ("trainable_vs_bare", "augment_vs_torchvision", "per_trial_overhead_s", "asha_epoch_fraction",
                "asha_best_minus_random_best", "gpu_images_per_s", "packing_speedup", "machine", "ray_start_s"):
        assert key in result, key
    machine = result["machine"]
    assert machine["cpu_count"] >= 1 and machine["torch"] and machine["date"]
    assert finite_positive(result["ray_start_s"])

    tb = result["trainable_vs_bare"]
    for key in ("ratio", "ours_images_per_s", "bare_images_per_s", "ray_trial_images_per_s",
                "ray_trial_bare_images_per_s", "ray_trial_ratio", "ray_trial_end_to_end_images_per_s",
                "ray_trial_validation_s", "ray_trial_checkpoint_and_report_s"):
        assert finite_positive(tb[key]), key

    assert finite_positive(result["augment_vs_torchvision"]["ratio"])

    overhead = result["per_trial_overhead_s"]
    for sweep in ("naive_defaults", "ours_trivial", "ours_trainable"):
        row = overhead[sweep]
        assert math.isfinite(row["per_trial_s"]) and finite_positive(row["wall_s"]), sweep
        assert finite_positive(row["mean_work_s"]), sweep
    assert overhead["naive_defaults"]["worker_processes"] == TINY.overhead_trials  # a fresh process per trial
    assert math.isfinite(overhead["ours_s"]) and math.isfinite(overhead["naive_s"])
    breakdown = overhead["breakdown"]
    for key in ("ray_actor_start_s", "import_torch_in_actor_s", "tune_report_s", "checkpoint_save_s",
                "tune_report_with_checkpoint_s"):
        assert finite_positive(breakdown[key]), key

    assert 0 < result["asha_epoch_fraction"] <= 1
    assert math.isfinite(result["asha_best_minus_random_best"])
    asha = result["asha_details"]
    assert asha["random"]["epochs_used"] == TINY.asha_trials * TINY.asha_epochs
    assert asha["noise_judged_by"] and math.isfinite(asha["noise_pp"])
    assert 0 < asha["expected_epoch_fraction"]["mean"] <= 1

    if not torch.cuda.is_available():
        assert result["gpu_images_per_s"] == result["packing_speedup"] == common.NOT_MEASURED_NO_GPU


def test_cost_repeatability_figure_is_well_formed():
    """Figure 10 on tiny settings, in this process: the shape of its result, not its timings."""
    from benchmarks.cost_repeatability import bench_cost_repeatability, cost_rows

    result = bench_cost_repeatability(TINY)
    assert result["repeats"] == TINY.cost_repeats == len(result["latency_ms"])
    assert all(finite_positive(v) for v in result["latency_ms"] + result["images_per_s"])
    assert math.isfinite(result["latency_spread_pct"]) and finite_positive(result["measure_s_per_footprint"])
    assert len(cost_rows(result)) == 2 and "not measured" in cost_rows("not measured")[0][1]
