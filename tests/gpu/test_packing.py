"""`--gpus-per-trial auto`'s estimate (tuner.packing: one step's peak x SAFETY + the CUDA context allowance) covers
the real trial, without wasting much; and four packed trials, each with a quarter of the GPU's memory as Ray's
--gpus-per-trial 0.25 gives, train at once on one GPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import math

import pytest
import torch

from tests.gpu.helpers import needs_cuda

pytestmark = pytest.mark.gpu

MIB = 2 ** 20
# the estimate may exceed the real trial's footprint by at most half of it plus 256 MiB (a small trial's CUDA
# context allowance dominates); below it, never
ESTIMATE_MARGIN, ESTIMATE_SLACK = 1.5, 256 * MIB
ESTIMATED = {"cnn_basic": {"model": "cnn_basic", "batch_size": 256}, "resnet18": {"model": "resnet18", "batch_size": 256}}


def test_the_packing_estimate_imports_without_ray(device, record_property):
    from gpucheck.checks import packing_module

    packing, how = packing_module()
    record_property("tuner.packing", how)
    fresh = subprocess.run([sys.executable, "-c", "import sys, tuner.packing; print('ray' in sys.modules)"],
                           capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert fresh.stdout.strip() == "False", fresh.stderr  # even where Ray is installed, this path never imports it
    assert packing.trial_bytes(2 ** 30) == int(2 ** 30 * packing.SAFETY) + packing.CUDA_CONTEXT_BYTES
    assert packing.choose_packing(packing.trial_bytes(2 ** 30), 80 * 2 ** 30) == packing.MAX_TRIALS_PER_GPU
    assert callable(packing.measure_peak_bytes)


@pytest.mark.parametrize("name", sorted(ESTIMATED))
def test_auto_estimate_covers_the_real_trial(name, device, record_property):
    needs_cuda(device, "it measures GPU memory")
    from gpucheck.checks import estimate_vs_trial, in_fresh_process

    config = {**ESTIMATED[name], "seed": 0}
    torch.cuda.init()
    free_before, _ = torch.cuda.mem_get_info()  # nothing else allocates on the GPU while the trial runs
    r = in_fresh_process(estimate_vs_trial, config, 45_000, 5_000, free_before, timeout=300)
    for key in ("estimate_bytes", "trial_bytes", "probe_peak_bytes", "trial_peak_reserved_bytes", "context_bytes",
                "data_bytes"):
        record_property(key.replace("_bytes", "_mib"), round(r[key] / MIB))
    record_property("trials_per_gpu", r["trials_per_gpu"])
    record_property("tuner.packing", r["packing_import"])
    assert r["trial_bytes"] <= r["estimate_bytes"], "the estimate is below what the real trial used"
    assert r["estimate_bytes"] <= ESTIMATE_MARGIN * r["trial_bytes"] + ESTIMATE_SLACK, "the estimate wastes memory"


def test_packed_trials_train_at_once(device, record_property):
    needs_cuda(device, "memory shares of one GPU (the packing section runs the same PackedTrials on the CPU)")
    from benchmarks.gpu import PackedTrials
    from trainables.config import TrialConfig

    k = 4
    config = TrialConfig.from_dict({"model": "resnet18", "batch_size": 256, "max_epochs": 10_000,
                                    "val_every": 10_000, "seed": 0}).to_dict()
    with PackedTrials(k, "cuda") as pool:  # each trial: 1/k of the GPU's memory (set_per_process_memory_fraction)
        trials = pool.round(config, k, 4096, 4.0)
    record_property("images_per_s", [round(t["images_per_s"]) for t in trials])
    record_property("epochs_in_window", [t["epochs_in_window"] for t in trials])
    share = torch.cuda.get_device_properties(0).total_memory / k
    record_property("peak_reserved_mib", [round(t["peak_reserved_bytes"] / MIB) for t in trials])
    assert len(trials) == k and all(math.isfinite(t["images_per_s"]) and t["images_per_s"] > 0 for t in trials)
    assert all(t["epochs_in_window"] >= 1 for t in trials), "a trial finished no epoch inside the shared window"
    assert all(0 < t["peak_reserved_bytes"] <= share for t in trials), "a trial outgrew its quarter of the GPU"
