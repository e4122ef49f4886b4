"""A saved view of the experiment's runs page, so the page a sweep prints opens on what a sweep is about: each
sweep with its trials nested under it, the validation and loss metrics and the searched params as columns, and a
parallel-coordinates chart of the searched params against best validation top-1. (The UI nests child runs only
in its default order, by start time; a view sorted by a metric shows a flat list: `sort_by_metric=True`.)

MLflow 3.17.2's UI keeps a saved (shared) view as the experiment tag `mlflow.sharedViewState.<key>`, and loads it
for the runs page's URL parameter `viewStateShareKey=<key>`; its "Views" menu lists it by name. The tag's value is
an envelope, JSON `{"name", "createdAt", "updatedAt" (ms), "state"}`, where `state` is itself the view as a JSON
string (the UI's own button writes it deflated as "deflate;<base64>"; plain JSON is read just as well). Of the
state, the UI takes the search facets (searchFilter, orderByKey, orderByAsc, startTime, lifecycleFilter,
modelVersionFilter, datasetsFilter) and the UI keys (selectedColumns, compareRunCharts, compareRunSections, ...),
but drops runsExpanded, runsPinned, runsHidden, runsVisibilityMap and autoRefreshEnabled; a column or sort key is
`metrics.`name`` / `params.`name``. A URL that carries a search facet itself ignores the saved view.
"""

from __future__ import annotations

import json
import time
from typing import Any, Iterable
from urllib.parse import quote

from tuner.tracking import runs_page

VIEW_KEY = "sweeps"  # one view per experiment, rewritten by every sweep: the URL stays the same
TAG_PREFIX = "mlflow.sharedViewState."
SHARE_PARAM = "viewStateShareKey"
START_TIME = "attributes.start_time"  # the UI's default order, the one in which it nests trials under sweeps
SORT_METRIC = "best_val_top1"  # what trials are selected on (tuner.report.analysis.OBJECTIVE)
FALLBACK_METRIC = "val_top1"  # runs logged before best_val_top1 existed
METRIC_COLUMNS = ("val_top1", "best_val_top1", "val_loss", "train_loss")  # of trainables.classify.EPOCH_METRICS
# MLflow's own defaults for the facets the view does not set (as its Share button writes them)
FACET_DEFAULTS = {"searchFilter": "", "startTime": "ALL", "lifecycleFilter": "Active", "datasetsFilter": [],
                  "modelVersionFilter": "All Runs"}
SEARCH_SECTION, MODEL_SECTION, SYSTEM_SECTION = "sweep-searched", "sweep-model-metrics", "sweep-system-metrics"


def column(group: str, name: str) -> str:
    """The UI's key of a column (and of a sort): `metrics.`val_top1``, `params.`lr``."""
    return f"{group}.`{name}`"


def sort_metric(client, experiment_id: str, preferred: str = SORT_METRIC) -> str:
    """`preferred` when some run of the experiment logged it, or when none logged either (a new sweep: its trials
    will); else FALLBACK_METRIC."""
    def logged(name: str) -> bool:
        found = client.search_runs([experiment_id], filter_string=f"metrics.`{name}` > -1e308", max_results=1)
        return bool(found)

    if preferred == FALLBACK_METRIC or logged(preferred) or not logged(FALLBACK_METRIC):
        return preferred
    return FALLBACK_METRIC


def view_state(metric: str, params: Iterable[str], sort_by_metric: bool = False) -> dict[str, Any]:
    """The view: runs nested under their sweep (or, `sort_by_metric`, a flat list best first), `metric` and the
    losses and searched params as columns, and the parallel-coordinates chart."""
    params = list(dict.fromkeys(params))
    metrics = list(dict.fromkeys([metric, *METRIC_COLUMNS]))
    columns = [column("metrics", m) for m in metrics] + [column("params", p) for p in params]
    sections = [section(MODEL_SECTION, "Model metrics"), section(SYSTEM_SECTION, "System metrics")]
    if params:  # its own section, listed first: in a generated one it comes after a chart per metric
        sections.insert(0, section(SEARCH_SECTION, "Searched params", generated=False))
    # columnOrder: in this order, else the UI orders them by name (val_top1 past the window's edge)
    order = column("metrics", metric) if sort_by_metric else START_TIME
    return {**FACET_DEFAULTS, "orderByKey": order, "orderByAsc": False,
            "selectedColumns": columns, "columnOrder": columns,
            "compareRunCharts": [parallel_chart(metric, params)] if params else [], "compareRunSections": sections}


def parallel_chart(metric: str, params: list[str]) -> dict[str, Any]:
    """The searched params against `metric` (MLflow otherwise shows no such chart, or arbitrary params)."""
    return {"uuid": "sweep-parallel", "type": "PARALLEL", "runsCountToCompare": 100,
            "metricSectionId": SEARCH_SECTION, "deleted": False, "isGenerated": False, "selectedParams": params,
            "selectedMetrics": [metric], "showAllRuns": True}


def section(uuid: str, name: str, generated: bool = True) -> dict[str, Any]:
    """A section of the chart view; into a generated one the UI still adds a chart per metric it finds."""
    return {"uuid": uuid, "name": name, "display": True, "isReordered": False, "deleted": False,
            "isGenerated": generated}


def share_runs_view(client, experiment_id: str, params: Iterable[str], metric: str = SORT_METRIC,
                    key: str = VIEW_KEY, sort_by_metric: bool = False) -> str:
    """Write (or rewrite) the experiment's saved view `key`; returns the key for the URL."""
    name = f"{TAG_PREFIX}{key}"
    metric = sort_metric(client, experiment_id, metric)
    now = int(time.time() * 1000)
    created = created_at(client.get_experiment(experiment_id).tags.get(name), now)
    title = f"Sweep trials by {metric}" if sort_by_metric else f"Sweeps and their trials, with {metric}"
    envelope = {"name": title, "createdAt": created, "updatedAt": now,
                "state": json.dumps(view_state(metric, params, sort_by_metric))}
    client.set_experiment_tag(experiment_id, name, json.dumps(envelope))
    return key


def created_at(existing: str | None, now: int) -> int:
    """A rewritten view keeps its creation time (the Views menu shows it)."""
    try:
        return int(json.loads(existing)["createdAt"])
    except (TypeError, ValueError, KeyError):
        return now


def shared_runs_page(tracking_uri: str, experiment_id: str, key: str = VIEW_KEY) -> str:
    """tuner.tracking.runs_page (the model-training view) opening on the saved view `key`."""
    return f"{runs_page(tracking_uri, experiment_id)}&{SHARE_PARAM}={quote(key, safe='')}"


def publish_runs_view(client, tracking_uri: str, experiment_id: str, params: Iterable[str]) -> str:
    """The runs page to print: with the sweep's view when it could be written, else the plain page (a view is a
    convenience; it never stops a sweep)."""
    try:
        key = share_runs_view(client, experiment_id, params)
    except Exception:  # noqa: BLE001 - any MLflow/network failure: the page without the view still works
        return runs_page(tracking_uri, experiment_id)
    return shared_runs_page(tracking_uri, experiment_id, key)
