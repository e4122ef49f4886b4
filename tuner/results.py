"""Ray Tune's results as our rows: one per trial (its status, figures, best checkpoint, config), one per epoch."""

from __future__ import annotations

import enum
import math
import numbers
from pathlib import Path
from typing import Any

from trainables.classify import EPOCH_METRICS
from trainables.config import TrialConfig


class TrialStatus(str, enum.Enum):
    """How a trial ended: the `status` column of trials.parquet and the `outcome` tag of its MLflow run."""

    FINISHED = "finished"  # trained its whole epoch budget
    EARLY_STOPPED = "early_stopped"  # its own patience ran out
    STOPPED = "stopped"  # the scheduler (ASHA) stopped it to give its slot to better trials
    FAILED = "failed"  # an exception
    DIVERGED = "diverged"  # a non-finite training loss
    OOM = "oom"  # ran out of memory: killed by Ray's memory monitor or the kernel, or a CUDA out-of-memory error
    INFEASIBLE = "infeasible"  # its footprint breaks a cost budget (--constraint): never trained
    INTERRUPTED = "interrupted"  # running when the sweep was stopped (Ctrl-C, SIGTERM); --resume continues it

    def __str__(self) -> str:
        return self.value


# trials whose validation figures count (selection, the report, warm starts, a grown searcher's history)
COMPLETED = (TrialStatus.FINISHED, TrialStatus.EARLY_STOPPED, TrialStatus.STOPPED)
UNSUCCESSFUL = (TrialStatus.FAILED, TrialStatus.DIVERGED, TrialStatus.OOM)
# what a Ray error or a trial's traceback says when a trial ran out of memory
OOM_MARKERS = ("OutOfMemoryError", "CUDA out of memory", "out of memory", "running low on memory",
               "Cannot allocate memory", "can't allocate memory", "not enough memory", "MemoryError")


def error_status(error: BaseException | str | None) -> TrialStatus:
    """FAILED, or OOM when the error says the trial ran out of memory (Ray's memory monitor, CUDA, the allocator)."""
    text = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error or "")
    return TrialStatus.OOM if any(marker in text for marker in OOM_MARKERS) else TrialStatus.FAILED


def trial_status(last_result: dict[str, Any], *, errored: bool, max_epochs: int,
                 error: BaseException | str | None = None) -> TrialStatus:
    """A trial's status from its last reported metrics and whether (and how) Ray saw it fail."""
    if errored:
        return error_status(error)
    if last_result.get("infeasible"):
        return TrialStatus.INFEASIBLE
    if last_result.get("diverged"):
        return TrialStatus.DIVERGED
    if int(last_result.get("epoch", 0)) >= max(max_epochs, 1):
        return TrialStatus.FINISHED
    return TrialStatus.EARLY_STOPPED if last_result.get("early_stopped") else TrialStatus.STOPPED


def scored(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of trials that completed with a finite validation top-1."""
    return [r for r in rows if r["status"] in COMPLETED and _finite(r.get("best_val_top1"))]


def trial_rows(result_grid) -> list[dict[str, Any]]:
    """One row per trial from Ray Tune's ResultGrid: outcome, timing, where it ran, best checkpoint, config."""
    rows = []
    for result in result_grid:
        metrics = result.metrics or {}
        config = result.config or {}
        history = result.metrics_dataframe
        best_val = float(history["val_top1"].max()) if history is not None and "val_top1" in history else math.nan
        best_ckpt = None
        if result.best_checkpoints:
            best_ckpt = max(result.best_checkpoints, key=lambda cm: cm[1].get("val_top1", -1))[0]
        epochs = int(metrics.get("epoch", 0))
        status = trial_status(metrics, errored=result.error is not None, max_epochs=int(config.get("max_epochs", 0)),
                              error=result.error)
        rows.append({
            "trial_id": metrics.get("trial_id") or Path(result.path).name,
            "status": status.value,
            "epochs": epochs,
            "best_val_top1": best_val,
            "last_val_top1": float(metrics.get("val_top1", math.nan)),
            "last_val_loss": float(metrics.get("val_loss", math.nan)),
            "images_per_s": float(metrics.get("images_per_s", math.nan)),
            "wall_s": float(metrics.get("time_total_s", math.nan)),
            "node_id": str(metrics.get("node_id", "")),
            "checkpoint": best_ckpt.path if best_ckpt is not None else None,
            "error": (_one_line(result.error) if result.error is not None else
                      f"non-finite training loss at epoch {epochs}" if status is TrialStatus.DIVERGED else None),
            # deployment costs (tuner.costs), constant over a trial: in every result of a multi-objective sweep
            **{k: float(v) for k, v in metrics.items() if k.startswith("cost_") and isinstance(v, numbers.Real)},
            **_resolved(config),
        })
    return sorted(rows, key=lambda r: r["trial_id"])


def epoch_rows(result_grid) -> list[dict[str, Any]]:
    """Every reported epoch of every trial: learning curves and ASHA rung survival for the report.

    A trial restored from a checkpoint may report an epoch twice; the last report wins.
    """
    columns = ("epoch", *EPOCH_METRICS, "time_total_s")
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    for result in result_grid:
        history = result.metrics_dataframe
        if history is None or "epoch" not in history:
            continue
        trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name
        for record in history.to_dict("records"):
            if not _finite(record.get("epoch")) or record.get("infeasible"):  # never trained: no epoch
                continue
            row = {"trial_id": trial_id, **{c: record.get(c, math.nan) for c in columns}}
            row["epoch"] = int(row["epoch"])
            rows[(trial_id, row["epoch"])] = row
    return [rows[key] for key in sorted(rows)]


def merge(earlier: list[dict[str, Any]], new: list[dict[str, Any]], key=lambda r: r["trial_id"]) -> list[dict]:
    """Earlier rows with the new ones in place of any they repeat (a resumed or grown sweep), sorted."""
    replaced = {key(r) for r in new}
    return sorted([r for r in earlier if key(r) not in replaced] + new, key=key)


def _resolved(config: dict[str, Any]) -> dict[str, Any]:
    """Every config key with the value the trial trained with, defaults included."""
    try:
        return TrialConfig.from_dict({k: v for k, v in config.items() if k in TrialConfig.keys()}).to_dict()
    except Exception:  # noqa: BLE001 - a config the trial itself rejected: keep what was given
        return {key: config.get(key) for key in TrialConfig.keys()}


def _finite(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[-1] if text else type(error).__name__)[:500]
