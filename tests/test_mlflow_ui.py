"""The MLflow UI of a finished sweep, as a user meets it: the page the sweep prints opens, in a real headless
Chromium, on the runs (not MLflow 3's GenAI overview), with the sweep's parent run and its trials nested under it;
the registered winner's page names its alias and source run.

MLFLOW_SCREENSHOT=docs/mlflow-runs.png saves the runs page as the README's picture."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests import browser
from tests._digits_sweep import REGISTERED, digits_sweep
from tuner import mlflow_view, tracking

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _chromium():
    browser.require_chromium()


def test_the_printed_runs_page_lists_the_trials_nested_under_the_sweep(tmp_path_factory, mlflow_server):
    import mlflow

    sweep_dir = digits_sweep(tmp_path_factory, mlflow_server)
    record = json.loads((sweep_dir / "sweep.json").read_text())
    client = mlflow.MlflowClient(mlflow_server.uri)
    parent = client.get_run(record["parent_run_id"])
    trials = [r.info.run_name for r in tracking.child_runs(client, parent.info.run_id)]
    assert len(trials) == 4
    # the page the sweep printed: the model-training runs view, on the saved view the sweep wrote
    url = mlflow_view.shared_runs_page(mlflow_server.uri, parent.info.experiment_id)
    with browser.open_page(url, width=1400, height=900) as page:
        page.locator('[role=columnheader][col-id="metrics.`val_top1`"]').wait_for()  # metric columns, unasked
        row = page.get_by_role("row").filter(has_text=parent.info.run_name).first
        row.wait_for()
        assert page.get_by_role("heading", name="Runs").is_visible()  # the runs view, not the GenAI overview
        assert not page.get_by_text("Token Usage").count()
        row.get_by_role("button").first.click()  # expand the sweep: its trials are nested under it
        for name in trials:
            page.get_by_role("link", name=name, exact=True).wait_for()
        shot = os.environ.get("MLFLOW_SCREENSHOT")
        if shot:
            Path(shot).parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=shot)
        errors = [e for e in page.errors if "404" not in e]  # the UI probes optional endpoints (GenAI, gateway)
    assert errors == []


def test_the_registered_winner_is_the_winning_trials_model(tmp_path_factory, mlflow_server):
    import mlflow

    sweep_dir = digits_sweep(tmp_path_factory, mlflow_server)
    record = json.loads((sweep_dir / "sweep.json").read_text())
    client = mlflow.MlflowClient(mlflow_server.uri)
    assert record["model_uri"].startswith(f"models:/{REGISTERED}/")  # other tests of the session register it too
    number = record["model_uri"].rsplit("/", 1)[1]
    version = client.get_model_version(REGISTERED, number)
    winner_run = tracking.trial_run_id(client, record["parent_run_id"], record["winner"])
    assert version.run_id == winner_run  # its source is the trial's own run, which lists it
    assert version.tags["sweep.parent_run_id"] == record["parent_run_id"]
    assert version.tags["trial_id"] == record["winner"] and version.tags["outputs"] == "probabilities"
    assert float(version.tags["val_top1"]) > 0 and "tested once" in version.description
    mlflow.set_tracking_uri(mlflow_server.uri)
    logged = mlflow.get_logged_model(version.model_id or version.source.removeprefix("models:/"))
    assert logged.params["model"] == "cnn_basic" and "lr" in logged.params  # the winner's own hyperparameters
