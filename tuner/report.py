"""`python -m tuner.report STORAGE/NAME`: one sweep's report, as one self-contained HTML file and as Markdown.

    STORAGE/NAME/report/report.html  every figure embedded as a base64 data URI: one file to mail or archive
    STORAGE/NAME/report/report.md    the same tables, referencing the PNGs beside it
    STORAGE/NAME/report/*.png        the figures; also attached to the sweep's parent MLflow run under report/

It reads only what the sweep left: sweep.json, trials.parquet, epochs.parquet (sweeps before it existed get no
learning curves), and final.parquet (each model family's best trial tested once) when present. Sections:
leaderboard, learning curves, best five per model family, parallel coordinates of the searched parameters,
parameter importance (Optuna's fANOVA on an in-memory study rebuilt from trials.parquet), ASHA rung survival,
trials and wall time by status, test results with confusion matrices.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import math
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainables.errors import UserError, error_line
from tuner.final import FINAL_FILE  # each family's best trial, tested once; absent in older sweeps
from tuner.results import COMPLETED  # trials whose validation figures count
from tuner.run import EXIT_USER_ERROR

REPORT_DIR = "report"
TOP_TRIALS = 10  # leaderboard rows
CURVE_TRIALS = 5  # learning curves drawn
FAMILY_TOP = 5  # bars per family
MIN_IMPORTANCE_TRIALS = 4  # fewer completed trials: no importance, and the report says why
LOG_PARAMS = ("lr", "weight_decay", "min_lr")  # drawn and modelled on a log scale
STATUS_COLORS = {"finished": "#2e7d32", "early_stopped": "#7cb342", "stopped": "#f9a825", "failed": "#c62828",
                 "diverged": "#6a1b9a"}
NOT_PARAMS = ("max_epochs", "seed", "pretrained")  # vary between sweeps' stages, never a searched knob here


@dataclass
class Sweep:
    """What a sweep folder holds, as read by the report and the exporter."""

    path: Path
    record: dict[str, Any]
    trials: Any  # pandas.DataFrame, one row per trial
    epochs: Any | None = None  # pandas.DataFrame, one row per (trial, epoch); None for sweeps before epochs.parquet
    final: Any | None = None  # pandas.DataFrame of final.parquet; None when absent

    @property
    def name(self) -> str:
        return self.record.get("spec", {}).get("name") or self.path.name

    @property
    def spec(self) -> dict[str, Any]:
        return self.record.get("spec", {})

    @property
    def parent_run_id(self) -> str | None:
        return self.record.get("parent_run_id")

    @property
    def tracking_uri(self) -> str | None:
        return self.record.get("tracking_uri") or self.spec.get("mlflow_uri")


def load_sweep(path: str | Path) -> Sweep:
    """Read a sweep folder; a path that is not one is a UserError naming what is missing."""
    import pyarrow.parquet as pq

    folder = Path(path).expanduser()
    if not folder.exists():
        raise UserError(f"{folder} does not exist; pass a sweep folder STORAGE/NAME made by python -m tuner.run")
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder; pass a sweep folder STORAGE/NAME made by python -m tuner.run")
    record_file = folder / "sweep.json"
    if not record_file.is_file():
        raise UserError(f"{folder} is not a sweep folder (no sweep.json); pass STORAGE/NAME of a sweep made by "
                        f"python -m tuner.run")
    try:
        record = json.loads(record_file.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{record_file} is unreadable ({type(exc).__name__}); it may be truncated") from None
    if not isinstance(record, dict):
        raise UserError(f"{record_file} is not a sweep record (expected a JSON object)")
    trials_file = folder / "trials.parquet"
    if not trials_file.is_file():
        raise UserError(f"{folder} has no trials.parquet: the sweep has not finished; continue it with "
                        f"python -m tuner.run --resume --name {folder.name} --storage {folder.parent}")

    def read(file: Path):
        try:
            return pq.read_table(file).to_pandas()
        except Exception as exc:  # noqa: BLE001 - any Arrow/IO error: the file is not what a sweep writes
            raise UserError(f"{file} is unreadable ({type(exc).__name__}); it may be truncated") from None

    trials = read(trials_file)
    if "trial_id" not in trials.columns or "best_val_top1" not in trials.columns:
        raise UserError(f"{trials_file} is not a sweep's trials table (no trial_id/best_val_top1 columns)")
    epochs = read(folder / "epochs.parquet") if (folder / "epochs.parquet").is_file() else None
    final = read(folder / FINAL_FILE) if (folder / FINAL_FILE).is_file() else None
    return Sweep(folder, record, trials, epochs, final)


# ---------------------------------------------------------------------------------------------------------------
# Pure parts: which parameters were searched, their importance, ASHA rung survival


def searched_params(trials) -> list[str]:
    """Trial-config keys whose value differs between trials: what the search varied (or a grid's axes)."""
    from trainables.config import TrialConfig

    params = []
    for key in TrialConfig.keys():
        if key in trials.columns and key not in NOT_PARAMS:
            values = trials[key].dropna()
            if values.map(repr).nunique() > 1:
                params.append(key)
    return params


def _python(value: Any) -> Any:
    """numpy scalars -> Python scalars (Optuna's distributions take only None, bool, int, float, str)."""
    return value.item() if hasattr(value, "item") else value


def distribution_of(name: str, values) -> Any:
    """The Optuna distribution a column's values were drawn from, inferred from the values themselves."""
    import pandas as pd
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    values = values.dropna()
    if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
        return CategoricalDistribution(sorted({_python(v) for v in values}, key=repr))
    low, high = _python(values.min()), _python(values.max())
    log = name in LOG_PARAMS and low > 0
    if pd.api.types.is_integer_dtype(values):
        return IntDistribution(int(low), int(high), log=log)
    return FloatDistribution(float(low), float(high), log=log)


@dataclass
class Importance:
    """Parameter importances (summing to 1), or why there are none."""

    values: dict[str, float] = field(default_factory=dict)
    reason: str = ""  # set when values is empty
    trials: int = 0
    evaluator: str = "fANOVA"


def param_importance(trials, params: list[str] | None = None, *, seed: int = 0) -> Importance:
    """Optuna's fANOVA importances of the searched parameters for best_val_top1.

    An in-memory Optuna study is rebuilt from the table: one completed trial per row that finished, stopped early
    or was stopped by ASHA (ASHA's stopped trials count with the figure they reached, as in Optuna's own ASHA
    studies), each parameter's distribution inferred from its values. Fewer than two parameters that vary among
    those trials, too few trials, or a constant objective: no importances, and `reason` says which.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created in memory" line
    params = searched_params(trials) if params is None else list(params)
    rows = trials[trials["status"].isin(COMPLETED) & trials["best_val_top1"].notna()] if "status" in trials else \
        trials[trials["best_val_top1"].notna()]
    rows = rows[rows["best_val_top1"].map(lambda v: math.isfinite(v))]
    varying = [p for p in params if p in rows.columns and rows[p].dropna().map(repr).nunique() > 1]
    result = Importance(trials=len(rows))
    if len(varying) < 2:
        result.reason = (f"importance ranks two or more searched parameters; among the {len(rows)} completed trials "
                         f"{len(varying)} varied" + (f" ({', '.join(varying)})" if varying else ""))
        return result
    if len(rows) < MIN_IMPORTANCE_TRIALS:
        result.reason = (f"importance needs at least {MIN_IMPORTANCE_TRIALS} completed trials; this sweep has "
                         f"{len(rows)}")
        return result
    if rows["best_val_top1"].nunique() < 2:
        result.reason = f"every completed trial reached the same validation top-1 ({rows['best_val_top1'].iloc[0]:.2f})"
        return result
    distributions = {p: distribution_of(p, rows[p]) for p in varying}
    study = optuna.create_study(direction="maximize")
    for _, row in rows.iterrows():
        values = {p: _python(row[p]) for p in varying if row[p] is not None and not _is_nan(row[p])}
        study.add_trial(optuna.trial.create_trial(
            params=values, distributions={p: distributions[p] for p in values},
            value=float(row["best_val_top1"])))
    try:
        importances = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=seed), params=varying)
    except Exception as exc:  # noqa: BLE001 - the evaluator's own complaint, e.g. degenerate data
        result.reason = f"Optuna's fANOVA evaluator failed: {error_line(exc)}"
        return result
    result.values = {k: float(v) for k, v in importances.items()}
    return result


def asha_rungs(grace_period: int, reduction_factor: float, max_t: int) -> list[int]:
    """The epochs at which Ray Tune's ASHA compares trials (its rung milestones below max_t)."""
    if grace_period < 1 or reduction_factor <= 1 or max_t <= grace_period:
        return []
    count = int(math.log(max_t / grace_period) / math.log(reduction_factor) + 1)
    return sorted({int(grace_period * reduction_factor ** k) for k in range(count)
                   if grace_period * reduction_factor ** k < max_t})


def rung_survival(epochs, trials) -> list[tuple[int, int]]:
    """(epoch, trials that reached it) for every epoch from 1 to the furthest any trial got.

    From epochs.parquet (the epochs each trial reported), else the trials table's `epochs` column.
    """
    if epochs is not None and len(epochs):
        reached = epochs.groupby("trial_id")["epoch"].max()
        reached = reached.reindex(trials["trial_id"]).fillna(0) if "trial_id" in trials else reached
    elif "epochs" in trials:
        reached = trials["epochs"].fillna(0)
    else:
        return []
    furthest = int(reached.max()) if len(reached) else 0
    return [(epoch, int((reached >= epoch).sum())) for epoch in range(1, furthest + 1)]


def space_rungs(sweep: Sweep) -> tuple[list[int], str]:
    """The sweep's ASHA milestones and a caption, from its space's settings; ([], why) without ASHA."""
    try:
        from search_spaces import get_space

        space = get_space(sweep.spec.get("space", ""))
    except Exception:  # noqa: BLE001 - an unknown or renamed space: no rungs to mark
        space = None
    if space is None or space.asha is None:
        return [], "no ASHA scheduler in this space" if space is not None else "space unknown"
    max_t = int(sweep.spec.get("max_epochs") or space.max_epochs)
    rungs = asha_rungs(space.asha.grace_period, space.asha.reduction_factor, max_t)
    return rungs, f"ASHA grace period {space.asha.grace_period}, reduction factor {space.asha.reduction_factor:g}"


# ---------------------------------------------------------------------------------------------------------------
# Figures (matplotlib, Agg)


@dataclass
class Figure:
    key: str
    title: str
    file: Path
    caption: str = ""


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 110, "axes.grid": True, "grid.alpha": 0.3,
                         "axes.spines.top": False, "axes.spines.right": False, "font.size": 10})
    return plt


def _save(fig, path: Path) -> Path:
    fig.savefig(path, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def ranked(trials):
    """Trials with a validation figure, best first (ties: fewer epochs, then trial id)."""
    valid = trials[trials["best_val_top1"].notna()]
    return valid.sort_values(["best_val_top1", "trial_id"], ascending=[False, True])


def plot_learning_curves(sweep: Sweep, path: Path, top: int = CURVE_TRIALS) -> Path | None:
    if sweep.epochs is None or not len(sweep.epochs):
        return None
    plt = _plt()
    leaders = ranked(sweep.trials).head(top)
    fig, (ax_val, ax_loss) = plt.subplots(1, 2, figsize=(11, 4.2))
    cmap = plt.get_cmap("tab10")
    for i, (_, row) in enumerate(leaders.iterrows()):
        history = sweep.epochs[sweep.epochs["trial_id"] == row["trial_id"]].sort_values("epoch")
        label = f"#{i + 1} {row['trial_id']} ({row.get('model', '')}, best {row['best_val_top1']:.1f}%)"
        val = history.dropna(subset=["val_top1"])
        ax_val.plot(val["epoch"], val["val_top1"], marker="o", color=cmap(i), label=label)
        loss = history.dropna(subset=["train_loss"])
        ax_loss.plot(loss["epoch"], loss["train_loss"], marker="o", color=cmap(i), label=label)
    ax_val.set(title="validation top-1", xlabel="epoch", ylabel="val top-1 (%)")
    ax_loss.set(title="training loss", xlabel="epoch", ylabel="train loss")
    for ax in (ax_val, ax_loss):
        ax.xaxis.get_major_locator().set_params(integer=True)
    handles, labels = ax_val.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(3, max(1, len(labels))), frameon=False,
               bbox_to_anchor=(0.5, -0.02 - 0.05 * math.ceil(len(labels) / 3)))
    fig.suptitle(f"Learning curves of the top {len(leaders)} trials (by best validation top-1)")
    fig.tight_layout()
    return _save(fig, path)


def plot_family_best(sweep: Sweep, path: Path, top: int = FAMILY_TOP) -> Path | None:
    """Best `top` trials of each model family side by side (the CIFAR-10 grid study's CNN/ResNet/ViT figure)."""
    trials = ranked(sweep.trials)
    if "model" not in trials or not len(trials):
        return None
    plt = _plt()
    families = sorted(trials["model"].dropna().unique(), key=lambda m: -trials[trials["model"] == m]
                      ["best_val_top1"].max())
    width = 0.8 / top
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(families) + 2.5), 4.5))
    shades = plt.get_cmap("Blues")
    best_seen = 0.0
    labelled: set[str] = set()
    for f, family in enumerate(families):
        members = trials[trials["model"] == family].head(top)
        for r, (_, row) in enumerate(members.iterrows()):
            x = f + (r - (top - 1) / 2) * width
            value = float(row["best_val_top1"])
            best_seen = max(best_seen, value)
            label = f"{_ordinal(r + 1)} best"
            ax.bar(x, value, width * 0.92, color=shades(0.9 - 0.13 * r), edgecolor="white",
                   label=None if label in labelled else label)
            labelled.add(label)
            ax.text(x, value + 0.8, f"{value:.1f}", ha="center", va="bottom", fontsize=7, rotation=90)
    scored, total = trials["model"].value_counts(), sweep.trials["model"].value_counts()
    ax.set_xticks(range(len(families)), [f"{fam}\n({scored[fam]} trials)" if scored[fam] == total[fam] else
                                         f"{fam}\n({scored[fam]} of {total[fam]} trials scored)" for fam in families])
    ax.set_ylim(0, min(100.0, best_seen + 12) if best_seen > 0 else 100.0)
    ax.set(ylabel="best val top-1 (%)", xlabel="model family",
           title=f"Best {top} trials per model family (validation top-1)")
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: labels[i])
    ax.legend([handles[i] for i in order], [labels[i] for i in order], loc="upper left",
              bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.grid(axis="x", visible=False)
    fig.tight_layout()
    return _save(fig, path)


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 11 <= n % 100 <= 13 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def encode_axis(name: str, values) -> tuple[list[float], list[tuple[float, str]], bool]:
    """A parallel-coordinates axis: values mapped to [0, 1] (log10 for lr/wd), tick (position, label) pairs, and
    whether the axis is categorical (categories evenly spaced, in sorted order)."""
    import pandas as pd

    series = values.reset_index(drop=True)
    if pd.api.types.is_bool_dtype(series) or not pd.api.types.is_numeric_dtype(series):
        categories = sorted({repr(v): v for v in series.dropna()}.values(), key=repr)
        spots = {repr(c): (i / (len(categories) - 1) if len(categories) > 1 else 0.5)
                 for i, c in enumerate(categories)}
        return ([spots.get(repr(v), math.nan) for v in series],
                [(spots[repr(c)], str(c)) for c in categories], True)
    numbers = series.astype(float)
    log = name in LOG_PARAMS and numbers.min() > 0
    scaled = numbers.map(math.log10) if log else numbers
    low, high = float(scaled.min()), float(scaled.max())
    span = high - low
    positions = [(v - low) / span if span > 0 else 0.5 for v in scaled]
    distinct = sorted(set(numbers.dropna()))
    if span <= 0:
        ticks = [(0.5, _short(float(numbers.iloc[0])))]
    elif len(distinct) <= 5:  # few values tried (an integer knob, a grid axis): a tick at each
        ticks = [(((math.log10(v) if log else v) - low) / span, _short(v)) for v in distinct]
    else:
        ticks = [(i / 4, _short(10 ** (low + span * i / 4) if log else low + span * i / 4)) for i in range(5)]
    return positions, ticks, False


def _short(value: float) -> str:
    return f"{value:.2g}" if abs(value) < 0.01 and value != 0 else f"{value:.3g}"


def plot_parallel(sweep: Sweep, params: list[str], path: Path) -> Path | None:
    """Parallel coordinates: one line per completed trial across its searched parameters to its val top-1."""
    trials = ranked(sweep.trials)
    if "status" in trials:
        trials = trials[trials["status"].isin(COMPLETED)]
    if not params or len(trials) < 2:
        return None
    plt = _plt()
    from matplotlib import colors

    axes = [*params, "best_val_top1"]
    encoded = {name: encode_axis(name, trials[name]) for name in axes}
    fig, ax = plt.subplots(figsize=(max(7.0, 1.25 * len(axes) + 2), 5.2))
    scores = trials["best_val_top1"].astype(float).tolist()
    norm = colors.Normalize(vmin=min(scores), vmax=max(scores) if max(scores) > min(scores) else min(scores) + 1)
    cmap = plt.get_cmap("viridis")
    order = sorted(range(len(scores)), key=lambda i: scores[i])  # the best drawn last, on top
    for i in order:
        ys = [encoded[name][0][i] for name in axes]
        best = i == order[-1]
        ax.plot(range(len(axes)), ys, color=cmap(norm(scores[i])), alpha=0.95 if best else 0.65,
                linewidth=2.6 if best else 1.3, zorder=3 if best else 2)
    for x, name in enumerate(axes):
        ax.axvline(x, color="#555555", linewidth=0.8, zorder=1)
        for y, label in encoded[name][1]:
            ax.text(x + 0.04, y, label, fontsize=7, va="center", ha="left", color="#222222", zorder=4,
                    bbox={"facecolor": "white", "alpha": 0.7, "edgecolor": "none", "pad": 0.5})
    names = [f"{n}\n(log)" if n in LOG_PARAMS and not encoded[n][2] else n for n in axes]
    names[-1] = "val top-1 (%)"
    ax.set_xticks(range(len(axes)), names, rotation=25, ha="right")
    ax.set_yticks([])
    ax.set_xlim(-0.2, len(axes) - 0.4)
    ax.set_ylim(-0.06, 1.06)
    ax.grid(False)
    ax.spines[["left", "top", "right"]].set_visible(False)
    colorbar = fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, pad=0.02)
    colorbar.set_label("best val top-1 (%)")
    ax.set_title(f"Searched parameters vs best validation top-1 ({len(trials)} completed trials)")
    fig.tight_layout()
    return _save(fig, path)


def plot_importance(importance: Importance, path: Path) -> Path | None:
    if not importance.values:
        return None
    plt = _plt()
    items = sorted(importance.values.items(), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(items) + 1.6))
    bars = ax.barh([k for k, _ in items], [v for _, v in items], color="#1565c0")
    for bar, (_, value) in zip(bars, items):
        ax.text(bar.get_width() + 0.01, bar.get_y() + bar.get_height() / 2, f"{value:.2f}", va="center", fontsize=8)
    ax.set_xlim(0, max(v for _, v in items) * 1.18 + 0.02)
    ax.set(xlabel="importance for best val top-1 (sums to 1)", ylabel="searched parameter",
           title=f"Parameter importance ({importance.evaluator}, {importance.trials} completed trials)")
    ax.grid(axis="y", visible=False)
    fig.tight_layout()
    return _save(fig, path)


def plot_rungs(survival: list[tuple[int, int]], rungs: list[int], total: int, caption: str,
               path: Path) -> Path | None:
    if not survival:
        return None
    plt = _plt()
    epochs = [e for e, _ in survival]
    counts = [n for _, n in survival]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(epochs) + 3), 4.0))
    colours = ["#ef6c00" if e in rungs else "#90a4ae" for e in epochs]
    ax.bar(epochs, counts, color=colours, width=0.8)
    if len(epochs) <= 40:
        for e, n in survival:
            ax.text(e, n + total * 0.01, str(n), ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, total * 1.12 + 0.5)
    ax.set(xlabel="epoch", ylabel="trials that reached it",
           title=f"Rung survival: {total} trials ({caption})")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.yaxis.get_major_locator().set_params(integer=True)
    from matplotlib.patches import Patch

    handles = [Patch(color="#90a4ae", label="epoch")]
    if rungs:
        handles.insert(0, Patch(color="#ef6c00", label=f"ASHA rung (epochs {', '.join(map(str, rungs))})"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    ax.grid(axis="x", visible=False)
    fig.tight_layout()
    return _save(fig, path)


def status_summary(trials) -> list[tuple[str, int, float]]:
    """(status, trials, summed trial wall seconds), in the order finished, early_stopped, stopped, failed, ..."""
    if "status" not in trials:
        return []
    known = list(STATUS_COLORS)
    statuses = sorted(trials["status"].fillna("unknown").unique(), key=lambda s: (known.index(s) if s in known
                                                                                   else len(known), s))
    wall = trials["wall_s"].fillna(0.0) if "wall_s" in trials else None
    return [(s, int((trials["status"] == s).sum()), float(wall[trials["status"] == s].sum()) if wall is not None
             else math.nan) for s in statuses]


def plot_status(summary: list[tuple[str, int, float]], path: Path) -> Path | None:
    if not summary:
        return None
    plt = _plt()
    fig, (ax_n, ax_t) = plt.subplots(1, 2, figsize=(10, 3.8))
    names = [s for s, _, _ in summary]
    colours = [STATUS_COLORS.get(s, "#757575") for s in names]
    counts = [n for _, n, _ in summary]
    scale, unit = (1.0, "s") if max(w for _, _, w in summary) < 120 else (60.0, "min")
    minutes = [w / scale for _, _, w in summary]
    ax_n.bar(names, counts, color=colours)
    for i, n in enumerate(counts):
        ax_n.text(i, n, str(n), ha="center", va="bottom", fontsize=9)
    ax_n.set(title=f"Trials by status ({sum(counts)} in all)", xlabel="status", ylabel="trials")
    ax_n.set_ylim(0, max(counts) * 1.18 + 0.5)
    ax_n.yaxis.get_major_locator().set_params(integer=True)
    ax_t.bar(names, minutes, color=colours)
    for i, (m, (_, _, w)) in enumerate(zip(minutes, summary)):
        ax_t.text(i, m, _duration(w), ha="center", va="bottom", fontsize=9)
    ax_t.set(title=f"Trial wall time by status ({_duration(sum(w for _, _, w in summary))} in all)",
             xlabel="status", ylabel=f"summed trial wall time ({unit})")
    ax_t.set_ylim(0, max(minutes) * 1.18 + 1e-3)
    for ax in (ax_n, ax_t):
        ax.grid(axis="x", visible=False)
    fig.tight_layout()
    return _save(fig, path)


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


# ---------------------------------------------------------------------------------------------------------------
# Tables


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]
    note: str = ""


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or _is_nan(value):
        return ""
    if isinstance(value, bool) or hasattr(value, "dtype") and value.dtype == bool:
        return str(bool(value))
    if isinstance(value, float) or hasattr(value, "dtype") and "float" in str(value.dtype):
        value = float(value)
        return f"{value:.3g}" if abs(value) < 0.01 and value != 0 else f"{value:.{digits}f}" if abs(value) >= 1 \
            else f"{value:.3g}"
    return str(value)


def _param_fmt(value: Any) -> str:
    """A config value: three significant digits for numbers (0.00845, 1, 0.5), text as is."""
    if value is None or _is_nan(value):
        return ""
    if isinstance(value, bool) or hasattr(value, "dtype") and value.dtype == bool:
        return str(bool(value))
    if isinstance(value, (int, float)) or hasattr(value, "dtype"):
        return f"{float(value):.3g}"
    return str(value)


def _is_nan(value: Any) -> bool:
    try:
        return isinstance(value, float) and math.isnan(value) or (hasattr(value, "dtype") and bool(value != value))
    except (TypeError, ValueError):
        return False


def leaderboard(sweep: Sweep, params: list[str], top: int = TOP_TRIALS) -> Table:
    leaders = ranked(sweep.trials).head(top)
    shown = [p for p in (["model"] if "model" in sweep.trials and "model" not in params else []) + params]
    columns = ["#", "trial", "status", "epochs", "best val top-1", "last val top-1", *shown, "img/s", "wall"]
    rows = []
    for i, (_, r) in enumerate(leaders.iterrows()):
        rows.append([str(i + 1), str(r["trial_id"]), str(r.get("status", "")), _fmt(r.get("epochs")),
                     _fmt(r["best_val_top1"]), _fmt(r.get("last_val_top1")), *[_param_fmt(r.get(p)) for p in shown],
                     _fmt(r.get("images_per_s"), 0), _duration(float(r.get("wall_s", math.nan)))])
    winner = sweep.record.get("winner")
    note = f"{len(sweep.trials)} trials; top {len(leaders)} by best validation top-1"
    if winner:
        note += f"; winner (tested once on the test split): {winner}"
    return Table("Leaderboard", columns, rows, note)


def test_tables(sweep: Sweep) -> tuple[list[Table], list[tuple[str, Path]]]:
    """The test results from final.parquet (each family's best, with confusion PNGs), else sweep.json's winner."""
    tables: list[Table] = []
    pngs: list[tuple[str, Path]] = []
    final = sweep.final
    if final is not None and len(final):
        reseeded = "seeds" in final and final["seeds"].fillna(1).max() > 1
        columns = ["family", "trial", "val top-1", "test top-1", "test top-5", "test loss", "test images"]
        if reseeded:
            columns += ["seeds", "val top-1 mean ± std", "test top-1 mean ± std"]
        rows = []
        for _, r in final.sort_values("test_top1", ascending=False).iterrows():
            row = [str(r["family"]), str(r["trial_id"]), _fmt(r.get("val_top1")), _fmt(r.get("test_top1")),
                   _fmt(r.get("test_top5")), _fmt(r.get("test_loss"), 3), _fmt(r.get("test_images"))]
            if reseeded:
                row += [_fmt(r.get("seeds")), _pm(r.get("val_top1_mean"), r.get("val_top1_std")),
                        _pm(r.get("test_top1_mean"), r.get("test_top1_std"))]
            rows.append(row)
            if r.get("confusion_png"):
                pngs.append((f"confusion matrix: {r['family']} (trial {r['trial_id']})",
                             sweep.path / str(r["confusion_png"])))
        tables.append(Table("Test results (each model family's best trial, tested once)", columns, rows,
                            "from final.parquet; the test split played no part in choosing these trials"))
        per_class = _per_class_table(final)
        if per_class is not None:
            tables.append(per_class)
    elif sweep.record.get("test"):
        test = sweep.record["test"]
        winner = sweep.record.get("winner", "")
        row = sweep.trials[sweep.trials["trial_id"] == winner]
        val = row["best_val_top1"].iloc[0] if len(row) else math.nan
        model = row["model"].iloc[0] if len(row) and "model" in row else ""
        tables.append(Table("Test results (the winner, tested once)",
                            ["trial", "model", "val top-1", "test top-1", "test top-5", "test loss", "test images"],
                            [[str(winner), str(model), _fmt(val), _fmt(test.get("top1")), _fmt(test.get("top5")),
                              _fmt(test.get("loss"), 3), _fmt(test.get("images"))]],
                            "from sweep.json (no final.parquet in this sweep folder)"))
    return tables, pngs


def _pm(mean: Any, std: Any) -> str:
    return "" if mean is None or _is_nan(mean) else f"{float(mean):.2f} ± {float(std or 0):.2f}"


def _per_class_table(final) -> Table | None:
    if "per_class_top1" not in final or "classes" not in final:
        return None
    families = list(final.itertuples(index=False))
    classes = list(families[0].classes) if len(families) and families[0].classes is not None else []
    if not classes or len(classes) > 30:
        return None
    rows = []
    for c, name in enumerate(classes):
        rows.append([str(name)] + [_fmt(f.per_class_top1[c]) if f.per_class_top1 is not None and
                                   c < len(f.per_class_top1) else "" for f in families])
    return Table("Per-class test top-1 (%)", ["class", *[str(f.family) for f in families]], rows)


# ---------------------------------------------------------------------------------------------------------------
# Rendering


@dataclass
class Report:
    html: Path
    markdown: Path
    figures: list[Figure]
    notes: dict[str, str]  # section -> why it has no figure
    mlflow_warning: str | None = None
    attached: bool = False


def build_report(sweep: Sweep, out_dir: Path | None = None) -> Report:
    """Write report.html, report.md and the PNGs into STORAGE/NAME/report/ (or out_dir)."""
    out = Path(out_dir) if out_dir else sweep.path / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("*.png"), out / "report.html", out / "report.md"]:  # this folder is ours: no stale figures
        old.unlink(missing_ok=True)
    params = searched_params(sweep.trials)
    figures: list[Figure] = []
    notes: dict[str, str] = {}

    def add(key: str, title: str, made: Path | None, caption: str, why_not: str) -> None:
        if made is not None:
            figures.append(Figure(key, title, made, caption))
        else:
            notes[key] = why_not

    add("curves", "Learning curves", plot_learning_curves(sweep, out / "learning_curves.png"),
        "Validation top-1 and training loss per epoch of the best trials.",
        "no epochs.parquet in this sweep folder (sweeps made before it existed)" if sweep.epochs is None
        else "no epoch was reported")
    add("families", "Best trials per model family", plot_family_best(sweep, out / "family_best5.png"),
        f"The best {FAMILY_TOP} trials of each model family by validation top-1.", "no trial has a validation figure")
    add("parallel", "Parallel coordinates", plot_parallel(sweep, params, out / "parallel_coordinates.png"),
        "Each line is a completed trial; each axis runs from the smallest to the largest value tried "
        "(categories evenly spaced); colour and the last axis are its best validation top-1.",
        "nothing was searched (every config key had one value)" if not params
        else "fewer than two completed trials")
    importance = param_importance(sweep.trials, params)
    add("importance", "Parameter importance", plot_importance(importance, out / "param_importance.png"),
        f"Optuna's fANOVA evaluator on an in-memory study of the {importance.trials} completed trials (ASHA's "
        f"stopped trials count with the best figure they reached)"
        + ("; with this few trials the ranking is rough." if importance.trials < 20 else "."),
        importance.reason)
    rungs, rung_caption = space_rungs(sweep)
    add("rungs", "ASHA rung survival", plot_rungs(rung_survival(sweep.epochs, sweep.trials), rungs,
                                                  len(sweep.trials), rung_caption, out / "rung_survival.png"),
        "How many trials reached each epoch; ASHA compares trials at its rungs and stops the rest.",
        "no trial reported an epoch")
    summary = status_summary(sweep.trials)
    add("status", "Trials and wall time by status", plot_status(summary, out / "status_wall_time.png"),
        "Trial counts and summed trial wall time per outcome.", "the trials table has no status column")
    tables, confusion = test_tables(sweep)
    for i, (title, src) in enumerate(confusion):
        if src.is_file():
            target = out / src.name
            shutil.copyfile(src, target)
            figures.append(Figure(f"confusion{i}", title, target, "Rows: true class; columns: predicted class."))
        else:
            notes[f"confusion{i}"] = f"{title}: {src} is missing"
    if not tables:
        notes["test"] = "no test results: the sweep has no winner yet (sweep.json has no test figures)"

    board = leaderboard(sweep, params)
    status_table = Table("Trials by status", ["status", "trials", "summed wall time"],
                         [[s, str(n), _duration(w)] for s, n, w in summary])
    importance_table = Table("Parameter importance", ["parameter", "importance"],
                             [[k, f"{v:.3f}"] for k, v in importance.values.items()]) if importance.values else None
    context = _context(sweep, params)
    html_file, md_file = out / "report.html", out / "report.md"
    html_file.write_text(_html(sweep, context, board, figures, notes, importance_table, status_table, tables))
    md_file.write_text(_markdown(sweep, context, board, figures, notes, importance_table, status_table, tables))
    return Report(html_file, md_file, figures, notes)


def _context(sweep: Sweep, params: list[str]) -> list[tuple[str, str]]:
    spec, record = sweep.spec, sweep.record
    test = record.get("test") or {}
    items = [("sweep", sweep.name), ("space", str(spec.get("space", ""))), ("data set", str(spec.get("dataset", ""))),
             ("trials", f"{len(sweep.trials)} (asked for {spec.get('num_samples', '?')}), at most "
                        f"{spec.get('max_epochs', '?')} epochs each"),
             ("searched", ", ".join(params) or "nothing (every key fixed)"),
             ("completed", "yes" if record.get("completed") else "no (interrupted; resume it to finish)"),
             ("winner", f"{record.get('winner')} (test top-1 {test['top1']:.2f})" if test.get("top1") is not None
              else str(record.get("winner"))),
             ("registered model", str(record.get("model_uri") or "")),
             ("MLflow", f"{sweep.tracking_uri}, parent run {sweep.parent_run_id}"),
             ("folder", str(sweep.path.resolve())),
             ("generated", time.strftime("%Y-%m-%d %H:%M:%S"))]
    overrides = spec.get("overrides") or {}
    if overrides:
        items.insert(5, ("pinned (--set)", ", ".join(f"{k}={v}" for k, v in overrides.items())))
    return items


CSS = """
body { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .6em 0; font-size: .88em; }
th, td { border: 1px solid #ddd; padding: .25em .55em; text-align: right; }
th { background: #f3f5f7; } td:first-child, th:first-child { text-align: left; }
dl { display: grid; grid-template-columns: max-content auto; gap: .2em 1em; font-size: .92em; }
dt { font-weight: 600; } dd { margin: 0; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption, .note { color: #555; font-size: .88em; } .missing { color: #8a6d3b; font-style: italic; }
"""


def _html(sweep, context, board, figures, notes, importance_table, status_table, tables) -> str:
    esc = html.escape
    by_key = {f.key: f for f in figures}

    def table(t: Table | None) -> str:
        if t is None:
            return ""
        head = "".join(f"<th>{esc(c)}</th>" for c in t.columns)
        body = "".join("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in row) + "</tr>" for row in t.rows)
        note = f'<p class="note">{esc(t.note)}</p>' if t.note else ""
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{note}"

    def figure(f: Figure) -> str:
        data = base64.b64encode(f.file.read_bytes()).decode("ascii")
        return (f'<figure><img src="data:image/png;base64,{data}" alt="{esc(f.title)}">'
                f"<figcaption>{esc(f.caption)}</figcaption></figure>")

    def section(key: str, title: str, extra: str = "") -> str:
        body = figure(by_key[key]) if key in by_key else f'<p class="missing">No figure: {esc(notes.get(key, ""))}</p>'
        return f"<h2>{esc(title)}</h2>{body}{extra}"

    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Sweep report: "
             f"{esc(sweep.name)}</title><style>{CSS}</style></head><body>",
             f"<h1>Sweep report: {esc(sweep.name)}</h1>",
             "<dl>" + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in context) + "</dl>",
             f"<h2>{esc(board.title)}</h2>{table(board)}",
             section("curves", "Learning curves"),
             section("families", "Best trials per model family"),
             section("parallel", "Searched parameters vs validation top-1"),
             section("importance", "Parameter importance", table(importance_table)),
             section("rungs", "ASHA rung survival"),
             section("status", "Trials and wall time by status", table(status_table)),
             "<h2>Test results</h2>"]
    if tables:
        for t in tables:
            parts.append(f"<h3>{esc(t.title)}</h3>{table(t)}")
    else:
        parts.append(f'<p class="missing">{esc(notes.get("test", ""))}</p>')
    parts += [figure(f) for f in figures if f.key.startswith("confusion")]
    parts += [f'<p class="missing">{esc(v)}</p>' for k, v in notes.items() if k.startswith("confusion")]
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _markdown(sweep, context, board, figures, notes, importance_table, status_table, tables) -> str:
    by_key = {f.key: f for f in figures}

    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    def table(t: Table | None) -> list[str]:
        if t is None:
            return []
        lines = ["| " + " | ".join(cell(c) for c in t.columns) + " |",
                 "|" + "|".join("---" for _ in t.columns) + "|"]
        lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in t.rows]
        return lines + ([f"\n_{t.note}_"] if t.note else []) + [""]

    def section(key: str, title: str, extra: list[str] | None = None) -> list[str]:
        lines = [f"## {title}", ""]
        if key in by_key:
            f = by_key[key]
            lines += [f"![{f.title}]({f.file.name})", "", f"_{f.caption}_", ""]
        else:
            lines += [f"No figure: {notes.get(key, '')}", ""]
        return lines + (extra or [])

    lines = [f"# Sweep report: {sweep.name}", ""]
    lines += [f"- **{k}**: {cell(v)}" for k, v in context] + [""]
    lines += [f"## {board.title}", "", *table(board)]
    lines += section("curves", "Learning curves")
    lines += section("families", "Best trials per model family")
    lines += section("parallel", "Searched parameters vs validation top-1")
    lines += section("importance", "Parameter importance", table(importance_table))
    lines += section("rungs", "ASHA rung survival")
    lines += section("status", "Trials and wall time by status", table(status_table))
    lines += ["## Test results", ""]
    if tables:
        for t in tables:
            lines += [f"### {t.title}", "", *table(t)]
    else:
        lines += [notes.get("test", ""), ""]
    for f in figures:
        if f.key.startswith("confusion"):
            lines += [f"![{f.title}]({f.file.name})", "", f"_{f.title}. {f.caption}_", ""]
    lines += [v for k, v in notes.items() if k.startswith("confusion")]
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------------------------------------------------------
# MLflow


def quick_mlflow(uri: str):
    """An MlflowClient that gives up fast: one attempt per request and a short timeout, not minutes of retries
    (MLflow's defaults) when the server is gone. A SQLite URI whose file is missing is refused, not created."""
    import mlflow

    for key, value in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0"), ("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")):
        os.environ.setdefault(key, value)
    match = re.match(r"sqlite:///(.+)$", uri or "")
    if match and not Path(match.group(1)).is_file():
        raise FileNotFoundError(f"no database file {match.group(1)}")
    return mlflow.MlflowClient(uri)


def attach(sweep: Sweep, files: list[Path], artifact_path: str, tracking_uri: str | None = None) -> str | None:
    """Log files to the sweep's parent MLflow run under artifact_path. Returns None, or a one-line warning."""
    uri = tracking_uri or sweep.tracking_uri
    if not sweep.parent_run_id or not uri:
        return "the sweep record names no MLflow parent run; nothing attached"
    try:
        client = quick_mlflow(uri)
        client.get_run(sweep.parent_run_id)
        for file in files:
            client.log_artifact(sweep.parent_run_id, str(file), artifact_path=artifact_path)
    except Exception as exc:  # noqa: BLE001 - unreachable server, missing run, denied upload: all one warning
        return (f"could not attach to MLflow run {sweep.parent_run_id} at {uri} "
                f"({error_line(exc, 200)})")
    return None


# ---------------------------------------------------------------------------------------------------------------
# CLI


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tuner.report", description="Write a sweep's report (HTML with "
                                "embedded figures, Markdown + PNGs) into STORAGE/NAME/report/ and attach it to the "
                                "sweep's parent MLflow run.")
    p.add_argument("sweep_dir", metavar="STORAGE/NAME", help="the sweep folder (holds sweep.json, trials.parquet)")
    p.add_argument("--mlflow-uri", help="MLflow tracking URI (default: the one recorded in sweep.json)")
    p.add_argument("--no-mlflow", action="store_true", help="write the report only; attach nothing to MLflow")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        sweep = load_sweep(args.sweep_dir)
        report = build_report(sweep)
    except UserError as exc:
        print(f"error: {exc}")
        return EXIT_USER_ERROR
    print(f"report: {report.html} (self-contained, {len(report.figures)} figures)")
    print(f"        {report.markdown} (PNGs beside it)")
    for key, why in report.notes.items():
        print(f"  no {key} figure: {why}")
    if not args.no_mlflow:
        files = [f.file for f in report.figures] + [report.html, report.markdown]
        warning = attach(sweep, files, REPORT_DIR, args.mlflow_uri)
        if warning:
            print(f"warning: {warning}; the report is in {report.html.parent}")
        else:
            print(f"attached to MLflow run {sweep.parent_run_id} under {REPORT_DIR}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
