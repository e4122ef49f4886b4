"""A multi-objective sweep's report section: val top-1 against each cost, the Pareto front drawn, the constraint
lines, and the front's table (tuner.front marks the front in trials.parquet; this only draws it)."""

from __future__ import annotations

import math
from typing import Any

from tuner.objectives import COSTS, column, parse_constraints, parse_objectives
from tuner.report.plotting import pyplot, width
from tuner.report.tables import Table, fmt
from tuner.results import TrialStatus

LABELS = {"params_m": "parameters (millions)", "model_mb": "model size (MiB)", "latency_ms": "latency at batch 1 (ms)",
          "images_per_s": "throughput (images/s)", "peak_mem_mb": "peak inference memory (MiB)"}


def shown_costs(spec) -> list[str]:
    """The costs searched against, then those only constrained."""
    names = [o for o in spec.objectives if o in COSTS]
    return names + [c.metric for c in parse_constraints(spec.constraints) if c.metric in COSTS and c.metric not in names]


def _value(row: dict[str, Any], metric: str) -> float:
    value = row.get(column(metric))
    return float(value) if isinstance(value, (int, float)) and value == value else math.nan


def draw_front(rows: list[dict[str, Any]], spec):
    """One panel per cost: every trained trial (grey), the front (connected), footprints never trained (red ticks
    on the cost axis), each constraint as a dashed line. None when no trial was trained."""
    costs = shown_costs(spec)
    trained = [r for r in rows if r.get("status") != TrialStatus.INFEASIBLE
               and _value(r, "val_top1") == _value(r, "val_top1")
               and not math.isnan(float(r.get("best_val_top1", math.nan)))]
    if not costs or not trained:
        return None
    constraints = parse_constraints(spec.constraints)
    plt = pyplot()
    from matplotlib.ticker import NullFormatter
    fig, axes = plt.subplots(1, len(costs), figsize=(width(4.6 * len(costs) + 1), 3.8), squeeze=False)
    for ax, cost in zip(axes[0], costs):
        others = [r for r in trained if not r.get("pareto")]
        front = sorted((r for r in trained if r.get("pareto")), key=lambda r: _value(r, cost))
        ax.scatter([_value(r, cost) for r in others], [r["best_val_top1"] for r in others], s=22, color="#9e9e9e",
                   label="trained trials")
        # joined where the cost is an objective; where it is only constrained the front is a projection: dots
        ax.plot([_value(r, cost) for r in front], [r["best_val_top1"] for r in front],
                "-o" if cost in spec.objectives else "o", color="#1565c0", markersize=6,
                label=f"Pareto front ({', '.join(spec.objectives)})")
        never = [_value(r, cost) for r in rows if r.get("status") == TrialStatus.INFEASIBLE]
        if never:
            ax.plot(never, [0] * len(never), "|", color="#c62828", markersize=14, label="never trained (over budget)")
        for c in constraints:
            if c.metric == cost:
                ax.axvline(c.bound, color="#c62828", linestyle="--", linewidth=1, label=str(c))
            elif c.metric == "val_top1":
                ax.axhline(c.bound, color="#c62828", linestyle=":", linewidth=1, label=str(c))
        if all(_value(r, cost) > 0 for r in trained):  # costs span orders of magnitude across models
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels of a short log axis overlap
        ax.set(xlabel=LABELS.get(cost, cost) + ("  (higher is better)" if cost == "images_per_s" else ""),
               ylabel="best val top-1 (%)", title=f"val top-1 vs {cost}")
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def front_table(rows: list[dict[str, Any]], spec) -> Table:
    costs = shown_costs(spec)
    front = sorted((r for r in rows if r.get("pareto")), key=lambda r: -r["best_val_top1"])
    objectives = ", ".join(str(o) for o in parse_objectives(spec.objectives))
    out = [[str(r["trial_id"]), str(r.get("model", "")), fmt(r.get("width")), fmt(r.get("image_size"), 0),
            fmt(r["best_val_top1"]), *[fmt(_value(r, c), 3) for c in costs]] for r in front]
    never = sum(r.get("status") == TrialStatus.INFEASIBLE for r in rows)
    note = (f"{len(front)} of {len(rows)} trials are on the front ({objectives}; constraints: "
            f"{', '.join(spec.constraints) or 'none'}); {never} config(s) broke a cost budget and were never trained")
    return Table("Pareto front", ["trial", "model", "width", "image size", "best val top-1", *costs], out, note)
