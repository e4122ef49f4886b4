"""Out of memory is a trial outcome: a real sweep where one trial outgrows what it asked for, through the real CLI,
a real local Ray instance and a real per-trial memory cap.

How the trial is forced out of memory: `--memory-per-trial 1GB` is what every trial asks of Ray, and each CPU trial
is capped (RLIMIT_DATA, set in the trainable from its request) at 1.25x that. The grid's three models at 32 px,
batch 256, measured with packing.measure_host_bytes: cnn_basic peaks at ~0.95 GiB of private memory and
vit_scratch at ~0.64 GiB (both fit), resnet18 at ~1.9 GiB: its first big allocation fails inside the trial, for
real, as it would on a node running out. A node-wide cap (a cgroup, Ray's memory monitor) would need root or kill
the wrong process; this one is the mechanism every sweep runs with.
"""

from __future__ import annotations

import pytest

from tests.conftest import REPO, run_cli
from tuner.folder import SweepFolder

pytestmark = pytest.mark.integration

GRID = ["--space", "cnn_grid", "--dataset", "digits", "--max-epochs", "1", "--set", "lr=1e-3",
        "--set", "weight_decay=1e-4", "--set", "gamma=0.97", "--set", "sched=cosine", "--set", "augment=true",
        "--set", "width=1", "--set", "image_size=32", "--set", "batch_size=256", "--memory-per-trial", "1GB"]


def test_a_trial_out_of_memory_ends_oom_and_the_sweep_finishes(tmp_path):
    import mlflow

    proc = run_cli(*GRID, "--storage", str(tmp_path / "s"), "--name", "oom",
                   "--mlflow-uri", f"sqlite:///{tmp_path / 'm.db'}", cwd=tmp_path, timeout=600)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text
    assert "Traceback" not in text and "Memory on the node" not in text and "Trial task failed" not in text
    assert "memory: 1.0 GiB per trial (--memory-per-trial" in " ".join(proc.stdout.split())
    assert "2 trial(s) fit at once" in " ".join(proc.stdout.split())
    assert " ".join(proc.stdout.split()).count("ran out of memory") == 1  # one line, for the one trial

    rows = {r["model"]: r for r in SweepFolder(tmp_path / "s" / "oom").read_trials()}
    assert rows["resnet18"]["status"] == "oom"
    assert "out of memory (host)" in rows["resnet18"]["error"] and "asked Ray for 1.00 GiB" in rows["resnet18"]["error"]
    assert rows["cnn_basic"]["status"] == rows["vit_scratch"]["status"] == "finished"

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    runs = {r.data.params.get("model"): r for r in client.search_runs(
        [client.get_experiment_by_name("cnn_grid").experiment_id]) if "trial_id" in r.data.tags}
    oom = runs["resnet18"]
    assert oom.info.status == "FAILED" and oom.data.tags["outcome"] == "oom"
    reason = oom.data.tags["end_reason"]
    assert "asked Ray for 1.00 GiB" in reason and "peak resident memory reached" in reason and "available" in reason
    assert runs["cnn_basic"].info.status == "FINISHED"


@pytest.mark.slow
def test_every_trial_out_of_memory_exits_non_zero(tmp_path):
    proc = run_cli(*GRID, "--set", "model=resnet18", "--storage", str(tmp_path / "s"), "--name", "all-oom",
                   "--mlflow-uri", f"sqlite:///{tmp_path / 'm.db'}", cwd=tmp_path, timeout=600)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "1 trial(s) oom" in " ".join(proc.stdout.split())
    assert [r["status"] for r in SweepFolder(tmp_path / "s" / "all-oom").read_trials()] == ["oom"]
