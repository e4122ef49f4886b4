"""The report's tables as plain text cells (the renderers escape them): the sweep's particulars, the leaderboard,
trials by status, parameter importance and the test results (final.parquet, else sweep.json's winner)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tuner.report.analysis as analysis
from tuner.report.figures import duration

TOP_TRIALS = 10  # leaderboard rows
PER_CLASS_LIMIT = 30  # more classes than this: no per-class table


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]
    note: str = ""


def fmt(value: Any, digits: int = 2) -> str:
    """A figure: `digits` decimals from 1 up, three significant digits below."""
    if analysis.is_missing(value):
        return ""
    if isinstance(value, bool) or hasattr(value, "dtype") and value.dtype == bool:
        return str(bool(value))
    if isinstance(value, float) or hasattr(value, "dtype") and "float" in str(value.dtype):
        value = float(value)
        return f"{value:.{digits}f}" if abs(value) >= 1 else f"{value:.3g}"
    return str(value)


def param_fmt(value: Any) -> str:
    """A config value: three significant digits for numbers (0.00845, 1, 0.5), text as is."""
    if analysis.is_missing(value):
        return ""
    if isinstance(value, bool) or hasattr(value, "dtype") and value.dtype == bool:
        return str(bool(value))
    if isinstance(value, (int, float)) or hasattr(value, "dtype"):
        return f"{float(value):.3g}"
    return str(value)


def plus_minus(mean: Any, std: Any) -> str:
    return "" if analysis.is_missing(mean) else \
        f"{float(mean):.2f} ± {0.0 if analysis.is_missing(std) else float(std):.2f}"


def context(sweep, params: list[str]) -> list[tuple[str, str]]:
    """The sweep's particulars: (label, text) pairs above the sections."""
    spec, record = sweep.spec, sweep.record
    test = record.test or {}
    items = [("sweep", sweep.name), ("space", spec.space), ("data set", spec.dataset),
             ("trials", f"{len(sweep.trials)} (asked for {spec.num_samples}), at most {spec.max_epochs} epochs each"),
             ("searched", ", ".join(params) or "nothing (every key fixed)"),
             ("completed", "yes" if record.completed else "no (interrupted; resume it to finish)"),
             ("winner", f"{record.winner} (test top-1 {test['top1']:.2f})" if test.get("top1") is not None
              else str(record.winner)),
             ("registered model", str(record.model_uri or "")),
             ("MLflow", f"{record.tracking_uri or spec.mlflow_uri}, parent run {record.parent_run_id}"),
             ("folder", str(sweep.path.resolve())),
             ("generated", time.strftime("%Y-%m-%d %H:%M:%S"))]
    if spec.overrides:
        items.insert(5, ("pinned (--set)", ", ".join(f"{k}={v}" for k, v in spec.overrides.items())))
    return items


def leaderboard(sweep, params: list[str], top: int = TOP_TRIALS) -> Table:
    trials = sweep.frames.trials
    leaders = analysis.ranked(trials).head(top)
    shown = (["model"] if "model" in trials and "model" not in params else []) + params
    columns = ["#", "trial", "status", "epochs", "best val top-1", "last val top-1", *shown, "img/s", "wall"]
    rows = []
    for i, (_, r) in enumerate(leaders.iterrows()):
        rows.append([str(i + 1), str(r["trial_id"]), str(r.get("status", "")), fmt(r.get("epochs")),
                     fmt(r[analysis.OBJECTIVE]), fmt(r.get("last_val_top1")), *[param_fmt(r.get(p)) for p in shown],
                     fmt(r.get("images_per_s"), 0), duration(float(r.get("wall_s", math.nan)))])
    note = f"{len(trials)} trials; top {len(leaders)} by best validation top-1"
    if sweep.record.winner:
        note += f"; winner (tested once on the test split): {sweep.record.winner}"
    return Table("Leaderboard", columns, rows, note)


def status_table(summary: list[tuple[str, int, float]]) -> Table:
    return Table("Trials by status", ["status", "trials", "summed wall time"],
                 [[s, str(n), duration(w)] for s, n, w in summary])


def importance_table(importance: analysis.Importance) -> Table | None:
    if not importance.values:
        return None
    return Table("Parameter importance", ["parameter", "importance"],
                 [[k, f"{v:.3f}"] for k, v in importance.values.items()])


def stages_table(sweep) -> Table | None:
    """A two-stage sweep's families: stage 1's pick (tested once) beside the winner of its stage-2 sweep."""
    rows = sweep.stages_summary()
    if not rows:
        return None
    return Table("Both stages, per model family",
                 ["family", "stage 1 trial", "stage 1 val top-1", "stage 1 test top-1", "stage 2 sweep",
                  "stage 2 trial", "stage 2 val top-1", "stage 2 test top-1", "registered model"],
                 [[r["family"], str(r["stage1_trial"]), fmt(r["stage1_val"]), fmt(r["stage1_test"]),
                   r["stage2_sweep"], str(r["stage2_trial"]), fmt(r["stage2_val"]), fmt(r["stage2_test"]),
                   str(r["model_uri"] or "")] for r in rows],
                 "each family's stage-2 sweep started from its best stage-1 checkpoint; its own report is in "
                 "that sweep's folder")


def test_tables(sweep) -> tuple[list[Table], list[tuple[str, Path]]]:
    """The test results from final.parquet (each family's best, with its confusion PNG), else sweep.json's
    winner; and (title, PNG in the sweep folder) for each confusion matrix."""
    final = sweep.frames.final
    if final is not None and len(final):
        return _final_tables(sweep, final)
    test = sweep.record.test
    if not test:
        return [], []
    trials = sweep.frames.trials
    winner = sweep.record.winner or ""
    row = trials[trials["trial_id"] == winner]
    val = row[analysis.OBJECTIVE].iloc[0] if len(row) else math.nan
    model = row["model"].iloc[0] if len(row) and "model" in row else ""
    return [Table("Test results (the winner, tested once)",
                  ["trial", "model", "val top-1", "test top-1", "test top-5", "test loss", "test images"],
                  [[str(winner), str(model), fmt(val), fmt(test.get("top1")), fmt(test.get("top5")),
                    fmt(test.get("loss"), 3), fmt(test.get("images"))]],
                  "from sweep.json (no final.parquet in this sweep folder)")], []


def _final_tables(sweep, final) -> tuple[list[Table], list[tuple[str, Path]]]:
    reseeded = "seeds" in final and final["seeds"].fillna(1).max() > 1
    columns = ["family", "trial", "val top-1", "test top-1", "test top-5", "test loss", "test images"]
    if reseeded:
        columns += ["seeds", "val top-1 mean ± std", "test top-1 mean ± std"]
    rows, pngs = [], []
    for _, r in final.sort_values("test_top1", ascending=False).iterrows():
        row = [str(r["family"]), str(r["trial_id"]), fmt(r.get("val_top1")), fmt(r.get("test_top1")),
               fmt(r.get("test_top5")), fmt(r.get("test_loss"), 3), fmt(r.get("test_images"))]
        if reseeded:
            row += [fmt(r.get("seeds")), plus_minus(r.get("val_top1_mean"), r.get("val_top1_std")),
                    plus_minus(r.get("test_top1_mean"), r.get("test_top1_std"))]
        rows.append(row)
        if r.get("confusion_png"):
            pngs.append((f"confusion matrix: {r['family']} (trial {r['trial_id']})",
                         sweep.path / str(r["confusion_png"])))
    tables = [Table("Test results (each model family's best trial, tested once)", columns, rows,
                    "from final.parquet; the test split played no part in choosing these trials")]
    per_class = per_class_table(final)
    return tables + ([per_class] if per_class is not None else []), pngs


def per_class_table(final) -> Table | None:
    if "per_class_top1" not in final or "classes" not in final or not len(final):
        return None
    families = list(final.itertuples(index=False))
    classes = list(families[0].classes) if families[0].classes is not None else []
    if not classes or len(classes) > PER_CLASS_LIMIT:
        return None
    rows = [[str(name)] + [fmt(f.per_class_top1[c]) if f.per_class_top1 is not None and c < len(f.per_class_top1)
                           else "" for f in families] for c, name in enumerate(classes)]
    return Table("Per-class test top-1 (%)", ["class", *[str(f.family) for f in families]], rows)
