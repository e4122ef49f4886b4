"""Real sweeps: a real local Ray instance started by the CLI, a real `mlflow server` on 127.0.0.1."""

import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from tests.conftest import MlflowServer, run_cli
from tuner.folder import SweepFolder

pytestmark = pytest.mark.integration

REQUIRED_COLUMNS = {"trial_id", "status", "epochs", "best_val_top1", "last_val_top1", "wall_s", "node_id",
                    "checkpoint"}


def child_runs(client, parent):
    return client.search_runs([parent.info.experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")


@pytest.fixture
def own_mlflow_server(tmp_path):
    """A server of this test's own: it counts parents, runs and registered versions from a clean store."""
    server = MlflowServer(tmp_path / "mlflow-server").start()
    yield server
    server.stop()


def test_quickstart_sweep_tracked_in_mlflow_server(tmp_path, own_mlflow_server):
    import mlflow

    mlflow_server = own_mlflow_server

    proc = run_cli("--space", "resnet_rsb", "--dataset", "digits", "--num-samples", "4", "--max-epochs", "2",
                   "--storage", str(tmp_path / "sweeps"), "--name", "quick", "--mlflow-uri", mlflow_server.uri,
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr

    table = pq.read_table(tmp_path / "sweeps" / "quick" / "trials.parquet").to_pylist()
    # portable: checkpoints are stored relative to the sweep folder, and read back where the folder is now
    assert all(r["checkpoint"] and not r["checkpoint"].startswith("/") for r in table)
    table = SweepFolder(tmp_path / "sweeps" / "quick").read_trials()
    assert all(os.path.isdir(r["checkpoint"]) for r in table)
    assert len(table) == 4 and REQUIRED_COLUMNS <= set(table[0]) and "lr" in table[0] and "opt" in table[0]
    assert all(r["status"] in ("finished", "stopped") and r["node_id"] for r in table)
    assert max(r["best_val_top1"] for r in table) > 40  # chance is 10
    assert all(r["epochs"] == 2 for r in table if r["status"] == "finished")

    client = mlflow.MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name("resnet_rsb")
    parents = client.search_runs([experiment.experiment_id], filter_string="tags.`sweep.role` = 'parent'")
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.tags["dataset"] == "digits"
    assert "version.torch" in parent.data.tags and "test_top1" in parent.data.metrics
    children = child_runs(client, parent)
    assert len(children) == 4
    by_trial = {r["trial_id"]: r for r in table}
    for run in children:
        row = by_trial[run.data.tags["trial_id"]]
        history = client.get_metric_history(run.info.run_id, "val_top1")
        assert [m.step for m in history] == list(range(1, row["epochs"] + 1))
        # a trial ASHA stopped did what it was given: FINISHED, its outcome tag tells it from a finish
        assert (run.info.status, run.data.tags["outcome"]) == ("FINISHED", row["status"])
        assert float(run.data.params["lr"]) == pytest.approx(row["lr"])

    # The registered winner loads from the server and predicts like its checkpoint.
    versions = client.search_model_versions("name='resnet_rsb-digits'")
    assert len(versions) == 1
    mlflow.set_tracking_uri(mlflow_server.uri)
    model = mlflow.pytorch.load_model("models:/resnet_rsb-digits/1")
    winner = max(table, key=lambda r: r["best_val_top1"])
    assert parent.data.tags["winner_trial_id"] == winner["trial_id"]
    from trainables.classify import load_checkpoint_model
    from trainables.data import load_dataset

    reference, _ = load_checkpoint_model(winner["checkpoint"])
    images = torch.from_numpy(load_dataset("digits").val_x[:16].astype(np.float32) / 255)
    with torch.no_grad():
        assert torch.equal(model(images).argmax(1), reference(images).argmax(1))


def test_asha_stops_trials_early_with_default_local_mlflow(tmp_path):
    """8 trials: ASHA cuts some before --max-epochs; MLflow's default store is ./mlflow.db in the cwd."""
    import mlflow

    proc = run_cli("--space", "resnet_rsb", "--dataset", "digits", "--num-samples", "8", "--max-epochs", "4",
                   "--set", "model=cnn_basic", "--set", "width=0.25", "--name", "asha", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = pq.read_table(tmp_path / "sweeps" / "asha" / "trials.parquet").to_pylist()
    assert len(table) == 8
    stopped = [r for r in table if r["status"] == "stopped"]
    assert stopped and all(r["epochs"] < 4 for r in stopped)
    assert any(r["status"] == "finished" and r["epochs"] == 4 for r in table)

    assert (tmp_path / "mlflow.db").exists()
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("resnet_rsb")
    runs = {r.data.tags.get("trial_id"): r for r in client.search_runs([experiment.experiment_id])}
    assert all((runs[r["trial_id"]].info.status, runs[r["trial_id"]].data.tags["outcome"]) == ("FINISHED", "stopped")
               for r in stopped)
    # every trial kept its best KEEP_CHECKPOINTS by validation, plus Ray's latest when that is not among them
    from tuner.experiment import KEEP_CHECKPOINTS

    for trial_dir in (tmp_path / "sweeps" / "asha").glob("trial_*"):
        assert len(list(trial_dir.glob("checkpoint_*"))) <= KEEP_CHECKPOINTS + 1
