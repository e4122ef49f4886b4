"""The Pareto front of a multi-objective sweep: marked in trials.parquet, tested once, shown, tagged in MLflow.

    trials.parquet   feasible: bool (meets every --constraint), pareto: bool (non-dominated among the feasible)
    front.parquet    one row per front member, tested once: trial_id, val_top1, test_top1, test_top5 and its costs
"""

from __future__ import annotations

import logging
import math
from typing import Any

from tuner.objectives import (COSTS, column, feasible, most_accurate_feasible, parse_constraints, parse_objectives,
                              pareto_front)
from tuner.folder import FRONT_FILE, write_table
from tuner.results import TrialStatus

log = logging.getLogger(__name__)


def mark_front(rows: list[dict[str, Any]], spec) -> list[dict[str, Any]]:
    """Sets `feasible` and `pareto` on every row of a multi-objective sweep (in place; returned)."""
    if not spec.multi_objective:
        return rows
    objectives, constraints = parse_objectives(spec.objectives), parse_constraints(spec.constraints)
    front = pareto_front(rows, objectives, constraints)
    for row in rows:
        row["feasible"] = row["status"] != TrialStatus.INFEASIBLE and feasible(row, constraints)
        row["pareto"] = row["trial_id"] in front
    return rows


def front_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted((r for r in rows if r.get("pareto")), key=lambda r: -r["best_val_top1"])


def test_front(rows: list[dict[str, Any]], splits, folder) -> list[dict[str, Any]]:
    """Each front member's one pass over the test split, into front.parquet (the winner's own test is final's)."""
    import pyarrow as pa

    from tuner.final import test_once

    out = []
    for row in front_rows(rows):
        try:
            _, test = test_once(row["checkpoint"], splits)
        except Exception as exc:  # noqa: BLE001 - an unreadable checkpoint: the others are still tested
            log.warning("front member %s is not tested: %s", row["trial_id"], exc)
            continue
        out.append({"trial_id": row["trial_id"], "model": row.get("model"), "val_top1": row["best_val_top1"],
                    "test_top1": test.top1, "test_top5": test.top5,
                    **{column(m): row.get(column(m), math.nan) for m in COSTS}})
    if out:
        write_table(folder.file(FRONT_FILE), pa.Table.from_pylist(out))
    return out


def print_front(sweep, console) -> None:
    """The front on the terminal: accuracy and each cost, the constraints, the most accurate feasible trial."""
    from rich.table import Table

    spec = sweep.spec
    if not spec.multi_objective:
        return
    rows = sweep.trials
    objectives, constraints = parse_objectives(spec.objectives), parse_constraints(spec.constraints)
    front = front_rows(rows)
    costs = [o.name for o in objectives if o.name in COSTS] + [c.metric for c in constraints
                                                               if c.metric in COSTS and c.metric not in spec.objectives]
    tested = {}
    if sweep.folder.file(FRONT_FILE).is_file():
        import pyarrow.parquet as pq

        tested = {r["trial_id"]: r for r in pq.read_table(sweep.folder.file(FRONT_FILE)).to_pylist()}
    budget = ", ".join(map(str, constraints)) or "none"
    table = Table(title=f"Pareto front: {len(front)} of {len(rows)} trials ({', '.join(map(str, objectives))}; "
                        f"constraints: {budget})")
    for name in ("trial", "model", "val top-1", "test top-1", *costs):
        table.add_column(name, justify="left" if name == "model" else "right", no_wrap=True)
    for row in front:
        test = tested.get(row["trial_id"], {}).get("test_top1", math.nan)
        table.add_row(row["trial_id"], str(row.get("model")), f"{row['best_val_top1']:.2f}",
                      "-" if test != test else f"{test:.2f}", *(f"{row.get(column(c), math.nan):.3g}" for c in costs))
    console.print(table)
    never = sum(r["status"] == TrialStatus.INFEASIBLE for r in rows)
    best = most_accurate_feasible(rows, constraints)
    console.print(f"{never} trial(s) broke a cost budget and were never trained; the most accurate feasible trial is "
                  f"{best['trial_id'] if best else 'none'}", soft_wrap=True)


def log_front(client, parent_run_id: str, rows: list[dict[str, Any]]) -> None:
    """Each trial's run gets its costs (metrics, step 0) and tags `pareto` and `feasible`; the parent run the front's
    trial ids (`pareto_front`)."""
    from mlflow.entities import Metric, RunTag

    from tuner.tracking import child_runs

    runs = {r.data.tags.get("trial_id"): r.info.run_id for r in child_runs(client, parent_run_id)}
    for row in rows:
        run_id = runs.get(row["trial_id"])
        if run_id is None or "pareto" not in row:
            continue
        metrics = [Metric(column(m), float(row[column(m)]), 0, 0) for m in COSTS
                   if isinstance(row.get(column(m)), float) and math.isfinite(row[column(m)])]
        client.log_batch(run_id, metrics=metrics, tags=[RunTag("pareto", str(bool(row["pareto"])).lower()),
                                                        RunTag("feasible", str(bool(row["feasible"])).lower())])
    client.set_tag(parent_run_id, "pareto_front", ",".join(r["trial_id"] for r in front_rows(rows)))
