"""The saved view the printed runs page opens on: its tag is MLflow 3.17.2's saved-view envelope, and in a real
headless Chromium the page shows the val_top1 column with the trials best first, and the parallel-coordinates chart
of the searched params."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from tests import browser
from tuner import mlflow_view

PARAMS = ["lr", "batch_size"]
TRIALS = {"trial_a": (50.0, 0.1), "trial_b": (90.0, 0.01), "trial_c": (70.0, 0.001), "trial_d": (30.0, 0.3)}


def test_the_view_nests_trials_or_sorts_by_the_metric_and_selects_its_columns():
    assert mlflow_view.view_state("best_val_top1", PARAMS)["orderByKey"] == "attributes.start_time"  # nested
    state = mlflow_view.view_state("best_val_top1", PARAMS + ["lr"], sort_by_metric=True)
    assert state["orderByKey"] == "metrics.`best_val_top1`" and state["orderByAsc"] is False
    assert state["selectedColumns"] == ["metrics.`best_val_top1`", "metrics.`val_top1`", "metrics.`val_loss`",
                                        "metrics.`train_loss`", "params.`lr`", "params.`batch_size`"]
    assert state["columnOrder"] == state["selectedColumns"]
    (chart,) = state["compareRunCharts"]
    assert chart["type"] == "PARALLEL" and chart["selectedParams"] == PARAMS
    assert chart["selectedMetrics"] == ["best_val_top1"]
    assert chart["metricSectionId"] == state["compareRunSections"][0]["uuid"]  # the first section
    assert "runsExpanded" not in state  # the UI drops it from a shared view; a metric sort shows runs unnested
    nothing_searched = mlflow_view.view_state("val_top1", [])
    assert nothing_searched["compareRunCharts"] == [] and len(nothing_searched["compareRunSections"]) == 2


def test_the_metric_columns_are_what_trials_log():
    from trainables.classify import EPOCH_METRICS

    assert set(mlflow_view.METRIC_COLUMNS) <= set(EPOCH_METRICS)
    assert {mlflow_view.SORT_METRIC, mlflow_view.FALLBACK_METRIC} <= set(EPOCH_METRICS)


def test_the_page_keeps_the_model_training_view_and_names_the_view():
    url = mlflow_view.shared_runs_page("http://host:5000/", "7")
    assert url == "http://host:5000/#/experiments/7/runs?workflowType=machine_learning&viewStateShareKey=sweeps"


@pytest.mark.integration
def test_the_view_tag_is_rewritten_in_place(mlflow_server):
    import mlflow

    client = mlflow.MlflowClient(mlflow_server.uri)
    experiment_id = _experiment_with_trials(client, metrics=("val_top1",))  # no best_val_top1: the fallback
    assert mlflow_view.share_runs_view(client, experiment_id, PARAMS) == "sweeps"
    first = _view_tags(client, experiment_id)
    time.sleep(0.01)
    mlflow_view.share_runs_view(client, experiment_id, PARAMS, sort_by_metric=True)
    again = _view_tags(client, experiment_id)
    assert list(again) == ["mlflow.sharedViewState.sweeps"]
    envelope = json.loads(again["mlflow.sharedViewState.sweeps"])
    assert envelope["createdAt"] == json.loads(first["mlflow.sharedViewState.sweeps"])["createdAt"]
    assert envelope["updatedAt"] >= envelope["createdAt"] and envelope["name"] == "Sweep trials by val_top1"
    assert json.loads(envelope["state"])["orderByKey"] == "metrics.`val_top1`"


@pytest.mark.integration
def test_the_printed_page_nests_the_trials_under_the_sweep_with_their_metric_columns(mlflow_server):
    import mlflow

    browser.require_chromium()
    client = mlflow.MlflowClient(mlflow_server.uri)
    experiment_id = _experiment_with_trials(client)
    url = mlflow_view.publish_runs_view(client, mlflow_server.uri, experiment_id, PARAMS)
    assert url.endswith("workflowType=machine_learning&viewStateShareKey=sweeps")
    with browser.open_page(url, width=1400, height=900) as page:
        header = page.locator('[role=columnheader][col-id="metrics.`val_top1`"]')  # the grid's, not its tooltip
        header.wait_for()
        assert header.is_visible()
        row = page.get_by_role("row").filter(has_text="sweep").first
        row.wait_for()
        row.get_by_role("button").first.click()  # expand the sweep: its trials are nested under it
        for name in TRIALS:
            page.get_by_role("link", name=name, exact=True).wait_for()
        values = dict(_table_rows(page))
        assert {name: values.get(name) for name in TRIALS} == {n: f"{TRIALS[n][0]:g}" for n in TRIALS}
        errors = [e for e in page.errors if "404" not in e and "ResizeObserver" not in e]
    assert errors == []


@pytest.mark.integration
def test_a_view_sorted_by_the_metric_shows_val_top1_with_the_best_trial_first(mlflow_server):
    import mlflow

    browser.require_chromium()
    client = mlflow.MlflowClient(mlflow_server.uri)
    experiment_id = _experiment_with_trials(client)
    key = mlflow_view.share_runs_view(client, experiment_id, PARAMS, sort_by_metric=True)
    url = mlflow_view.shared_runs_page(mlflow_server.uri, experiment_id, key)
    best_first = sorted(TRIALS, key=lambda name: -TRIALS[name][0])
    with browser.open_page(url, width=1400, height=900) as page:
        header = page.locator('[role=columnheader][col-id="metrics.`val_top1`"]')  # the grid's, not its tooltip
        header.wait_for()
        assert header.is_visible()
        page.get_by_role("link", name=best_first[-1], exact=True).wait_for()
        rows = _table_rows(page)
        assert [name for name, _ in rows if name in TRIALS] == best_first
        assert [value for name, value in rows if name in TRIALS] == [f"{TRIALS[n][0]:g}" for n in best_first]
        page.locator("label:has(input[value=CHART])").click()  # the chart view: the searched params' chart
        page.get_by_text("Parallel Coordinates").first.wait_for()
        errors = [e for e in page.errors if "404" not in e and "ResizeObserver" not in e]
    assert errors == []  # 404: the UI probes optional endpoints; ResizeObserver: a benign layout notice


def _experiment_with_trials(client, metrics: tuple[str, ...] = ("val_top1", "best_val_top1", "val_loss",
                                                                 "train_loss")) -> str:
    """A sweep's shape: a parent run and a child run per trial, with a trial's last-epoch metrics."""
    from mlflow.entities import Metric, Param

    experiment_id = client.create_experiment(f"view-{uuid.uuid4().hex[:8]}",
                                             tags={"mlflow.experimentKind": "custom_model_development"})
    parent = client.create_run(experiment_id, run_name="sweep", tags={"sweep.role": "parent"}).info.run_id
    now = int(time.time() * 1000)
    for name, (top1, lr) in TRIALS.items():
        run = client.create_run(experiment_id, run_name=name, tags={"mlflow.parentRunId": parent}).info.run_id
        values = {"val_top1": top1 - 1, "best_val_top1": top1, "val_loss": 1 / top1, "train_loss": 2 / top1}
        if "best_val_top1" not in metrics:
            values["val_top1"] = top1
        client.log_batch(run, params=[Param("lr", str(lr)), Param("batch_size", "32")],
                         metrics=[Metric(k, values[k], now, 3) for k in metrics])
        client.set_terminated(run)
    client.set_terminated(parent)
    return experiment_id


def _view_tags(client, experiment_id: str) -> dict[str, str]:
    tags = client.get_experiment(experiment_id).tags
    return {k: v for k, v in tags.items() if k.startswith(mlflow_view.TAG_PREFIX)}


def _table_rows(page) -> list[tuple[str, str]]:
    """(run name, best_val_top1 cell) per row of the runs table, top to bottom: the grid draws rows in any order
    and splits each between its pinned and scrolled parts, so cells are joined on the row's index."""
    return [tuple(row) for row in page.evaluate("""() => {
        const rows = {};
        for (const cell of document.querySelectorAll('[row-index] [col-id]')) {
            const index = Number(cell.closest('[row-index]').getAttribute('row-index'));
            const row = rows[index] = rows[index] || ['', ''];
            const col = cell.getAttribute('col-id');
            const link = cell.querySelector('a');  // the name's cell also holds the run's colour
            if (col === 'attributes.`Run Name`' && link) row[0] = link.innerText.trim();
            if (col === 'metrics.`best_val_top1`') row[1] = cell.innerText.trim();
        }
        return Object.keys(rows).map(Number).sort((a, b) => a - b).map(i => rows[i]);
    }""")]
