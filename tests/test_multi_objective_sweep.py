"""A real multi-objective sweep (accuracy vs CPU latency under a budget) on digits through the CLI: real Ray, a
real SQLite MLflow store, costs measured per footprint before any trial; then grown by --add-trials."""

import glob
import json
import pickle

import pyarrow.parquet as pq
import pytest

from tests.conftest import run_cli
from tuner.folder import SweepFolder
from tuner.objectives import parse_constraints, parse_objectives, pareto_front

pytestmark = pytest.mark.integration

# params_m<=0.5 rules resnet18 and mobilenetv3 out whatever the machine's load (their counts are fixed); the loose
# latency budget is a real measured constraint that cnn_basic and the small ViT meet even on a busy CPU
BUDGET = ["--constraint", "latency_ms<=40", "--constraint", "params_m<=0.5"]


def test_accuracy_under_a_budget_sweep_then_grown(tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    common = ["--space", "efficiency", "--storage", str(tmp_path / "sweeps"), "--name", "mo", "--mlflow-uri", uri]
    proc = run_cli(*common, "--dataset", "digits", "--num-samples", "6", "--max-epochs", "1", "--cost-batch", "8",
                   "--memory-per-trial", "2GB", *BUDGET, cwd=tmp_path)  # no memory probes: this test is about costs
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Traceback" not in out and "costs: 6 footprint(s)" in out and "Pareto front:" in out  # ViT, MobileNetV3: one width

    folder = SweepFolder(tmp_path / "sweeps" / "mo")
    rows = folder.read_trials()
    costs = json.loads(folder.file("costs.json").read_text())["costs"]
    constraints = parse_constraints(BUDGET[1::2])
    # every config over a cost budget was never trained; every config within it was
    for row in rows:
        over = row["cost_params_m"] > 0.5 or row["cost_latency_ms"] > 40
        assert (row["status"] == "infeasible") == over, row
        if over:
            assert row["epochs"] == 0 and not row["checkpoint"] and not row["feasible"]
            assert not glob.glob(str(folder.path / f"trial_{row['trial_id']}" / "checkpoint_*"))
    assert {r["model"] for r in rows if r["status"] == "infeasible"} <= {"resnet18", "mobilenetv3"}
    assert len(costs) == 6 and all(r["cost_latency_ms"] in [c["latency_ms"] for c in costs.values()] for r in rows)
    # the front in Parquet is the front recomputed from its rows
    front = pareto_front(rows, parse_objectives("val_top1,latency_ms"), constraints)
    assert front and {r["trial_id"] for r in rows if r["pareto"]} == front
    tested = pq.read_table(folder.file("front.parquet")).to_pylist()
    assert {r["trial_id"] for r in tested} == front and all(r["test_top1"] >= 0 for r in tested)
    # the report draws it
    report = (folder.path / "report" / "report.md").read_text()
    assert (folder.path / "report" / "pareto_front.png").is_file() and "Pareto front" in report
    # the registered model is the most accurate feasible trial, and it meets the budget
    record = folder.read_record()
    winner = next(r for r in rows if r["trial_id"] == record.winner)
    assert winner["feasible"] and winner["cost_latency_ms"] <= 40 and winner["cost_params_m"] <= 0.5
    assert winner["best_val_top1"] == max(r["best_val_top1"] for r in rows if r["feasible"])
    client = mlflow.MlflowClient(uri)
    runs = {r.data.tags["trial_id"]: r for r in client.search_runs(
        [client.get_experiment_by_name("efficiency").experiment_id]) if "trial_id" in r.data.tags}
    assert {t for t, run in runs.items() if run.data.tags.get("pareto") == "true"} == front
    assert all(run.data.tags["outcome"] == "infeasible" for t, run in runs.items()
               if next(r for r in rows if r["trial_id"] == t)["status"] == "infeasible")
    assert "cost_latency_ms" in runs[winner["trial_id"]].data.metrics
    assert client.get_model_version("efficiency-digits", "1").run_id == runs[winner["trial_id"]].info.run_id

    # --add-trials: the grown searcher is told every earlier trial with both objectives and the constraints
    proc = run_cli(*common, "--add-trials", "2", "--memory-per-trial", "2GB", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    state = pickle.load(open(glob.glob(str(folder.path / "more-1" / "searcher-state-*.pkl"))[0], "rb"))
    assert state["_metric"] == ["val_top1", "cost_latency_ms"]
    study = state["_ot_study"]
    assert len(study.directions) == 2 and len(study.trials) == len(rows) + 2
    assert all(len(t.values) == 2 and set(t.constraints) == {"latency_ms<=40", "params_m<=0.5"} for t in study.trials)
    grown = folder.read_trials()
    assert len(grown) == len(rows) + 2
    assert {r["trial_id"] for r in grown if r["pareto"]} == pareto_front(
        grown, parse_objectives("val_top1,latency_ms"), constraints)


@pytest.mark.slow
def test_a_budget_no_footprint_meets_is_one_line_before_any_trial(tmp_path):
    proc = run_cli("--space", "efficiency", "--dataset", "digits", "--cost-batch", "8", "--memory-per-trial", "2GB",
                   "--set", "model=cnn_basic", "--constraint", "params_m<=0.001", "--storage", str(tmp_path / "sweeps"), "--name", "none",
                   "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", cwd=tmp_path)
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and "Traceback" not in proc.stdout + proc.stderr
    assert errors == [line for line in errors if "no footprint the space samples meets params_m<=0.001: the "
                      "cheapest, cnn_basic, width 0.25, 16 px, measures params_m 0.0186" in line] and len(errors) == 1
    assert not (tmp_path / "sweeps" / "none").exists()  # nothing written, no trial started
