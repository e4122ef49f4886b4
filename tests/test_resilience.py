"""Nothing lost: a SIGKILLed driver resumes, failing trials stay alone, MLflow outages are replayed by tuner.sync."""

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
from ray import tune

from search_spaces import SPACES, SearchSpace
from tests.conftest import REPO, MlflowServer, run_cli
from tuner.run import main

pytestmark = pytest.mark.integration

SMALL = ["--set", "model=cnn_basic", "--set", "width=0.25"]


def start_cli(*args, cwd):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update({"PYTHONUNBUFFERED": "1", "COLUMNS": "160"})
    return subprocess.Popen([sys.executable, "-m", "tuner.run", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def wait_for_lines(proc, needle: str, count: int, timeout: float = 300) -> list[str]:
    seen, lines, deadline = 0, [], time.monotonic() + timeout
    while seen < count and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        lines.append(line)
        seen += needle in line
    assert seen >= count, "".join(lines)
    return lines


def mlflow_runs(uri, experiment="resnet_rsb"):
    import mlflow

    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id])


def test_sigkilled_driver_resumes_without_rerunning_or_duplicating(tmp_path):
    args = ["--space", "resnet_rsb", "--dataset", "digits", "--num-samples", "6", "--max-epochs", "3", *SMALL,
            "--name", "killed", "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    proc = start_cli(*args, cwd=tmp_path)
    wait_for_lines(proc, " after epoch ", 2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray instance it started, mid-sweep
    proc.wait()
    sweep = tmp_path / "sweeps" / "killed"
    done_before = {}
    for trial_dir in sweep.glob("trial_*"):
        checkpoints = sorted(trial_dir.glob("checkpoint_*"))
        if checkpoints:
            done_before[trial_dir.name] = {c.name: c.stat().st_mtime_ns for c in checkpoints}

    resumed = run_cli("--space", "resnet_rsb", "--resume", "--name", "killed", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    rows = pq.read_table(sweep / "trials.parquet").to_pylist()
    assert len(rows) == 6 and all(r["status"] in ("finished", "stopped") for r in rows)
    # trials that had finished before the kill were not trained again: their checkpoints are untouched
    finished_ids = {r["trial_id"] for r in rows}
    for name, stamps in done_before.items():
        for ckpt, mtime in stamps.items():
            path = sweep / name / ckpt
            assert not path.exists() or path.stat().st_mtime_ns == mtime or name.removeprefix("trial_") in finished_ids

    client, runs = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    children = [r for r in runs if "trial_id" in r.data.tags]
    assert sorted(r.data.tags["trial_id"] for r in children) == sorted(finished_ids)  # one run per trial, no dups
    assert not [r for r in runs if r.info.status == "RUNNING"]
    for run in children:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_top1")]
        assert len(steps) == len(set(steps))  # no epoch logged twice

    again = run_cli("--space", "resnet_rsb", "--resume", "--name", "killed", cwd=tmp_path)
    assert again.returncode == 0 and "already complete" in again.stdout


EXPLODING_NETS = """\
import torch.nn as nn


class Exploding(nn.Module):
    \"\"\"Trains for a few steps, then raises: a user's model with a bug the one-step preflight cannot see.\"\"\"

    def __init__(self, num_classes):
        super().__init__()
        self.head = nn.Linear(3, num_classes)
        self.steps = 0

    def forward(self, x):
        if self.training:
            self.steps += 1
            if self.steps > 5:
                raise RuntimeError("exploded on purpose after five steps")
        return self.head(x.mean((2, 3)))


def build(num_classes, image_size):
    return Exploding(num_classes)
"""


def test_failing_and_diverging_trials_end_alone(tmp_path, capsys, monkeypatch):
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "exploding_nets.py").write_text(EXPLODING_NETS)
    monkeypatch.syspath_prepend(str(tmp_path / "code"))  # the user's own code, shipped to the trials by the tool
    space = SearchSpace(
        name="resilience_probe", description="one trial of each outcome", reproduces="-", dataset="digits",
        fixed={"image_size": 16, "batch_size": 32, "opt": "sgd", "lr": 10.0, "momentum": 0.9999,
               "weight_decay": 0.0, "sched": "constant", "width": 0.25, "vit_dim": 32, "vit_depth": 1,
               "vit_heads": 2, "vit_patch": 4},
        # cnn_basic survives lr=10 (BatchNorm), the ViT's loss turns NaN, the user's model raises mid-epoch
        params={"model": tune.grid_search(["cnn_basic", "vit_scratch", "exploding_nets:build"])},
        search="grid", asha=None, num_samples=1, max_epochs=1)
    monkeypatch.setitem(SPACES, space.name, space)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = main(["--space", space.name, "--storage", str(tmp_path / "sweeps"), "--name", "f", "--mlflow-uri", uri])
    out = capsys.readouterr().out
    assert code == 0, out  # one trial finished
    rows = {r["model"]: r for r in pq.read_table(tmp_path / "sweeps" / "f" / "trials.parquet").to_pylist()}
    assert rows["cnn_basic"]["status"] == "finished"
    assert rows["vit_scratch"]["status"] == "diverged" and "non-finite" in rows["vit_scratch"]["error"]
    exploded = rows["exploding_nets:build"]
    assert exploded["status"] == "failed" and "exploded on purpose" in exploded["error"]
    assert "1 trial(s) diverged" in out and "1 trial(s) failed" in out
    client, runs = mlflow_runs(uri, space.name)
    status = {r.data.params["model"]: (r.info.status, r.data.tags.get("end_reason", "")) for r in runs
              if "model" in r.data.params}
    assert status["cnn_basic"][0] == "FINISHED"
    assert status["vit_scratch"][0] == "FAILED" and "diverged" in status["vit_scratch"][1]
    assert status["exploding_nets:build"][0] == "FAILED" and "exploded on purpose" in status["exploding_nets:build"][1]

    code = main(["--space", space.name, "--storage", str(tmp_path / "sweeps"), "--name", "all-fail",
                 "--mlflow-uri", uri, "--set", "model=exploding_nets:build"])
    assert code == 1  # no trial finished


def test_mlflow_outage_mid_sweep_then_sync(tmp_path):
    server = MlflowServer(tmp_path / "server").start()
    try:
        proc = start_cli("--space", "resnet_rsb", "--dataset", "digits", "--num-samples", "6", "--max-epochs", "3",
                         *SMALL, "--set", "val_every=1", "--name", "outage", "--mlflow-uri", server.uri, cwd=tmp_path)
        wait_for_lines(proc, " after epoch ", 1)
        server.kill()  # MLflow dies while trials run
        t0 = time.monotonic()
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out
        assert "python -m tuner.sync" in out
        sweep = tmp_path / "sweeps" / "outage"
        rows = pq.read_table(sweep / "trials.parquet").to_pylist()
        assert len(rows) == 6
        # logging runs beside Tune's loop: the trials never waited for the dead server
        stamps = sorted(json.loads(line)["timestamp"] for trial in sweep.glob("trial_*")
                        for line in (trial / "result.json").read_text().splitlines() if line.strip())
        gap = max(b - a for a, b in zip(stamps, stamps[1:]))
        print(f"\nMLflow killed mid-sweep: the rest took {time.monotonic() - t0:.0f} s, longest gap between "
              f"epoch reports {gap} s")
        assert gap <= 15, stamps

        server.start()  # back, same store
        sync = subprocess.run([sys.executable, "-m", "tuner.sync", str(sweep)], cwd=REPO, capture_output=True,
                              text=True, timeout=300)
        assert sync.returncode == 0, sync.stdout + sync.stderr
        client, runs = mlflow_runs(server.uri)
        children = [r for r in runs if "trial_id" in r.data.tags]
        assert sorted(r.data.tags["trial_id"] for r in children) == sorted(r["trial_id"] for r in rows)
        assert not [r for r in runs if r.info.status == "RUNNING"]
        by_trial = {r["trial_id"]: r for r in rows}
        for run in children:
            history = client.get_metric_history(run.info.run_id, "val_top1")
            assert sorted(m.step for m in history) == list(range(1, by_trial[run.data.tags["trial_id"]]["epochs"] + 1))
        parent = [r for r in runs if r.data.tags.get("sweep.role") == "parent"][0]
        assert "test_top1" in parent.data.metrics

        again = subprocess.run([sys.executable, "-m", "tuner.sync", str(sweep)], cwd=REPO, capture_output=True,
                               text=True, timeout=300)
        assert "0 run(s) created, 0 epoch(s) of metrics added, 0 run(s) closed" in " ".join(again.stdout.split())
    finally:
        server.stop()
