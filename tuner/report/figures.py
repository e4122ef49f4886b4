"""The report's figures, each a PNG drawn at the size it is shown (tuner.report.plotting).

Optuna draws what it has a plot for (optuna.visualization.matplotlib on analysis.study_of's study): parallel
coordinates, parameter importances, slice plots. Drawn here is what it has none for: learning curves with one loss
panel per kind of loss, the best trials per model family, ASHA rung survival, trials and wall time by status.
(No optimisation history: trials.parquet keeps no start times, and Ray's trial ids are not in time order.)

Each `draw_*` returns a matplotlib Figure, or None when there is nothing to draw (the report says why)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

from trainables.classify import EPOCH_METRICS
import tuner.report.analysis as analysis
from tuner.report.plotting import pyplot, width
from tuner.results import TrialStatus

CURVE_TRIALS = 5  # learning curves drawn
FAMILY_TOP = 5  # bars per family
PARALLEL_AXES = 8  # at most this many parameters on the parallel coordinates (the most important ones)
SLICE_PARAMS = 3  # slice plots of the most important parameters
STATUS_COLORS = {TrialStatus.FINISHED: "#2e7d32", TrialStatus.EARLY_STOPPED: "#7cb342", TrialStatus.STOPPED: "#f9a825",
                 TrialStatus.FAILED: "#c62828", TrialStatus.DIVERGED: "#6a1b9a", TrialStatus.OOM: "#ef6c00",
                 TrialStatus.INFEASIBLE: "#ad1457", TrialStatus.INTERRUPTED: "#0277bd"}  # every status its own
UNKNOWN_STATUS_COLOR = "#757575"  # a status this version does not know (a folder from a newer one)
OBJECTIVE_LABEL = "best val top-1 (%)"
VAL_TOP1, TRAIN_LOSS = "val_top1", "train_loss"  # the epoch metrics the curves draw
assert {VAL_TOP1, TRAIN_LOSS} <= set(EPOCH_METRICS)


@dataclass
class Figure:
    key: str
    title: str
    file: Path
    caption: str = ""


def _optuna_plot(draw, *args, size: tuple[float, float], **kwargs):
    """Call an optuna.visualization.matplotlib function with the house style at `size` inches; its Figure."""
    pyplot()
    import matplotlib
    from optuna.exceptions import ExperimentalWarning

    with warnings.catch_warnings(), matplotlib.rc_context({"figure.figsize": size}):  # Optuna sets ggplot's style
        warnings.simplefilter("ignore", ExperimentalWarning)
        ax = draw(*args, **kwargs)
    fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
    for each in fig.axes:  # the house look: white, light grid, dark text
        each.set_facecolor("white")
        each.grid(True, color="#dddddd", linewidth=0.8)
        each.tick_params(colors="#222222", labelsize=9)
        each.xaxis.label.set_color("#222222")
        each.yaxis.label.set_color("#222222")
        each.set_title("", loc="left")  # Optuna's own title; ours is set centred
        for spine in each.spines.values():
            spine.set_color("#888888")
    return fig


def draw_learning_curves(trials, epochs, top: int = CURVE_TRIALS):
    """Validation top-1 of the best trials, and their training loss with one panel per kind of loss (the `loss`
    config key: a BCE loss near 0.3 and a CE loss near 2 share no axis)."""
    if epochs is None or not len(epochs):
        return None
    plt = pyplot()
    leaders = analysis.ranked(trials).head(top)
    kinds = {k: ids for k, ids in analysis.loss_kinds(leaders).items() if ids}
    fig, axes = plt.subplots(1, 1 + len(kinds), figsize=(width(4.2 * (1 + len(kinds)) + 0.6), 4.0), squeeze=False,
                             sharex=True)  # one epoch range: a panel of one-epoch trials still reads 1..N
    ax_val, loss_axes = axes[0][0], dict(zip(kinds, axes[0][1:]))
    cmap = plt.get_cmap("tab10")
    for i, (_, row) in enumerate(leaders.iterrows()):
        history = epochs[epochs["trial_id"] == row["trial_id"]].sort_values("epoch")
        label = f"#{i + 1} {row['trial_id']} ({row.get('model', '')}, best {row[analysis.OBJECTIVE]:.1f}%)"
        val = history.dropna(subset=[VAL_TOP1])
        ax_val.plot(val["epoch"], val[VAL_TOP1], marker="o", color=cmap(i % 10), label=label)
        kind = next(k for k, ids in kinds.items() if row["trial_id"] in ids)
        loss = history.dropna(subset=[TRAIN_LOSS])
        loss_axes[kind].plot(loss["epoch"], loss[TRAIN_LOSS], marker="o", color=cmap(i % 10))
    ax_val.set(title="validation top-1", xlabel="epoch", ylabel="val top-1 (%)")
    for kind, ax in loss_axes.items():
        ax.set(title=f"training loss ({kind.upper()} trials)" if kind else "training loss", xlabel="epoch",
               ylabel=f"train {kind.upper()} loss" if kind else "train loss")
    last = epochs[epochs["trial_id"].isin(leaders["trial_id"])]["epoch"].max()
    for ax in axes[0]:
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlim(0.7, (int(last) if last == last and last >= 1 else 1) + 0.3)
    fig.legend(*ax_val.get_legend_handles_labels(), loc="upper center", ncol=min(3, max(1, len(leaders))),
               bbox_to_anchor=(0.5, 0.0))
    fig.suptitle(f"Learning curves of the top {len(leaders)} trials (by best validation top-1)")
    fig.tight_layout()
    return fig


def draw_family_best(trials, top: int = FAMILY_TOP):
    """Best `top` trials of each model family side by side (the CIFAR-10 grid study's CNN/ResNet/ViT figure);
    None with fewer than two families (nothing to compare)."""
    families = analysis.families(trials)
    if len(families) < 2:
        return None
    plt = pyplot()
    scored = analysis.ranked(trials)
    bar = 0.8 / top
    fig, ax = plt.subplots(figsize=(width(1.6 * len(families) + 3.5), 4.5))
    shades = plt.get_cmap("Blues")
    best_seen = 0.0
    labelled: set[int] = set()
    for f, family in enumerate(families):
        members = scored[scored["model"] == family].head(top)
        for r, value in enumerate(members[analysis.OBJECTIVE].astype(float)):
            x = f + (r - (top - 1) / 2) * bar
            best_seen = max(best_seen, value)
            ax.bar(x, value, bar * 0.92, color=shades(0.9 - 0.13 * r), edgecolor="white",
                   label=None if r in labelled else f"{_ordinal(r + 1)} best")
            labelled.add(r)
            ax.text(x, value + 0.8, f"{value:.1f}", ha="center", va="bottom", fontsize=8, rotation=90)
    counts, total = scored["model"].value_counts(), trials["model"].value_counts()
    ax.set_xticks(range(len(families)), [f"{m}\n({counts[m]} trials)" if counts[m] == total[m] else
                                         f"{m}\n({counts[m]} of {total[m]} trials scored)" for m in families])
    ax.set_ylim(0, min(100.0, best_seen + 12) if best_seen > 0 else 100.0)
    ax.set(ylabel=OBJECTIVE_LABEL, xlabel="model family", title=f"Best {top} trials per model family")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="x", visible=False)
    fig.tight_layout()
    return fig


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 11 <= n % 100 <= 13 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def parallel_params(params: list[str], importance: analysis.Importance, limit: int = PARALLEL_AXES) -> list[str]:
    """The parameters on the parallel coordinates: all, or with more than `limit` the most important ones."""
    if len(params) <= limit:
        return list(params)
    if importance.values:
        return sorted(importance.values, key=lambda p: -importance.values[p])[:limit]
    return list(params[:limit])


def draw_parallel(study, params: list[str]):
    """Optuna's parallel coordinates: one line per completed trial through its parameters (log axes for LOG_SCALE
    keys, categories as ticks), coloured by its best validation top-1."""
    if not params or len(study.trials) < 2:
        return None
    from optuna.visualization.matplotlib import plot_parallel_coordinate

    fig = _optuna_plot(plot_parallel_coordinate, study, params=params, target_name=OBJECTIVE_LABEL,
                       size=(width(1.15 * len(params) + 2.5), 5.0))
    ax = fig.axes[0]
    ax.set_title(f"Searched parameters vs best validation top-1 ({len(study.trials)} completed trials)", y=1.03)
    ax.grid(False)
    for label in ax.get_xticklabels():
        label.set(rotation=30, ha="right", rotation_mode="anchor", fontsize=10)
    for lines in ax.collections:  # light blue lines vanish on white: viridis keeps the worst trials visible
        lines.set_cmap("viridis")
    fig.subplots_adjust(left=0.04, right=0.9, bottom=0.2)
    return fig


def draw_importance(importance: analysis.Importance):
    """Optuna's importance bars (the same fANOVA evaluator and seed as the table)."""
    if not importance.values:
        return None
    from optuna.visualization.matplotlib import plot_param_importances

    fig = _optuna_plot(plot_param_importances, importance.study, evaluator=analysis.fanova(importance.seed),
                       params=list(importance.values), target_name=OBJECTIVE_LABEL,
                       size=(width(8.0), 0.42 * len(importance.values) + 1.8))
    ax = fig.axes[0]
    ax.set_title(f"Parameter importance ({importance.evaluator}, {importance.trials} completed trials)")
    ax.set(xlabel="importance for best val top-1 (sums to 1)", ylabel="searched parameter")
    if ax.get_legend() is not None:
        ax.get_legend().remove()
    ax.grid(axis="y", visible=False)
    return fig


def draw_slices(study, params: list[str]):
    """Optuna's slice plots: best val top-1 against each of `params`, one panel each, coloured by trial order."""
    if not params or len(study.trials) < 2:
        return None
    from optuna.visualization.matplotlib import plot_slice

    panel = width(3.4 * len(params) + 1.0) / len(params)  # plot_slice makes each panel half rc's figure width
    fig = _optuna_plot(plot_slice, study, params=params, target_name=OBJECTIVE_LABEL, size=(2 * panel, 3.8))
    fig.suptitle(f"Best validation top-1 against {', '.join(params)}")
    for colour_bar in fig.axes[len(params):]:  # Optuna colours by trial number; trial ids are not in time order
        colour_bar.remove()
    for ax in fig.axes:
        for dots in ax.collections:
            dots.set_array(None)
            dots.set_facecolor("#1565c0")
            dots.set_alpha(0.75)
    fig.subplots_adjust(left=0.07, right=0.98, wspace=0.12)
    return fig


def draw_rungs(survival: list[tuple[int, int]], rungs: list[int], total: int, caption: str):
    if not survival:
        return None
    plt = pyplot()
    from matplotlib.patches import Patch

    epochs, counts = [e for e, _ in survival], [n for _, n in survival]
    fig, ax = plt.subplots(figsize=(width(0.35 * len(epochs) + 5.5), 4.0))
    ax.bar(epochs, counts, color=["#ef6c00" if e in rungs else "#90a4ae" for e in epochs], width=0.8)
    if len(epochs) <= 40:
        for e, n in survival:
            ax.text(e, n + total * 0.01, str(n), ha="center", va="bottom", fontsize=9)
    ax.set_ylim(0, total * 1.12 + 0.5)
    ax.set(xlabel="epoch", ylabel="trials that reached it", title=f"Rung survival: {total} trials ({caption})")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.yaxis.get_major_locator().set_params(integer=True)
    handles = [Patch(color="#90a4ae", label="epoch")]
    if rungs:
        handles.insert(0, Patch(color="#ef6c00", label=f"ASHA rung (epochs {', '.join(map(str, rungs))})"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    ax.grid(axis="x", visible=False)
    fig.tight_layout()
    return fig


def draw_status(summary: list[tuple[str, int, float]]):
    if not summary:
        return None
    plt = pyplot()
    fig, (ax_n, ax_t) = plt.subplots(1, 2, figsize=(width(10.0), 3.8))
    names = [s for s, _, _ in summary]
    colours = [STATUS_COLORS.get(s, UNKNOWN_STATUS_COLOR) for s in names]  # a str Enum: its members are keyed by value
    counts = [n for _, n, _ in summary]
    scale, unit = (1.0, "s") if max(w for _, _, w in summary) < 120 else (60.0, "min")
    walls = [w / scale for _, _, w in summary]
    ax_n.bar(names, counts, color=colours)
    for i, n in enumerate(counts):
        ax_n.text(i, n, str(n), ha="center", va="bottom", fontsize=9)
    ax_n.set(title=f"Trials by status ({sum(counts)} in all)", xlabel="status", ylabel="trials")
    ax_n.set_ylim(0, max(counts) * 1.18 + 0.5)
    ax_n.yaxis.get_major_locator().set_params(integer=True)
    ax_t.bar(names, walls, color=colours)
    for i, (m, (_, _, w)) in enumerate(zip(walls, summary)):
        ax_t.text(i, m, duration(w), ha="center", va="bottom", fontsize=9)
    ax_t.set(title=f"Trial wall time by status ({duration(sum(w for _, _, w in summary))} in all)",
             xlabel="status", ylabel=f"summed trial wall time ({unit})")
    ax_t.set_ylim(0, max(walls) * 1.18 + 1e-3)
    for ax in (ax_n, ax_t):
        ax.grid(axis="x", visible=False)
    fig.tight_layout()
    return fig


def duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
