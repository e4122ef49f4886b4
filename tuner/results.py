"""After a sweep: the trials and epochs tables (Parquet), read back for resumes and grown sweeps."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from trainables.config import TrialConfig

TRIALS_FILE = "trials.parquet"
EPOCHS_FILE = "epochs.parquet"
RESEEDS_FILE = "reseeds.parquet"  # --reseed: the re-trained copies of the top configs
# per-epoch metrics every trial reports (trainables.classify), one row per (trial_id, epoch) in epochs.parquet
EPOCH_COLUMNS = ("epoch", "train_loss", "val_loss", "val_top1", "val_top5", "lr", "images_per_s", "epoch_s",
                 "time_total_s")
BASE_COLUMNS = ("trial_id", "status", "epochs", "best_val_top1", "last_val_top1", "last_val_loss",
                "images_per_s", "wall_s", "node_id", "checkpoint", "error")


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
        rows.append({
            "trial_id": metrics.get("trial_id") or Path(result.path).name,
            "status": trial_status(metrics, errored=result.error is not None, max_epochs=int(config.get("max_epochs", 0))),
            "epochs": epochs,
            "best_val_top1": best_val,
            "last_val_top1": float(metrics.get("val_top1", math.nan)),
            "last_val_loss": float(metrics.get("val_loss", math.nan)),
            "images_per_s": float(metrics.get("images_per_s", math.nan)),
            "wall_s": float(metrics.get("time_total_s", math.nan)),
            "node_id": str(metrics.get("node_id", "")),
            "checkpoint": best_ckpt.path if best_ckpt is not None else None,
            "error": (_one_line(result.error) if result.error is not None else
                      f"non-finite training loss at epoch {epochs}" if metrics.get("diverged") else None),
            **_resolved(config),
        })
    return sorted(rows, key=lambda r: r["trial_id"])


def _resolved(config: dict[str, Any]) -> dict[str, Any]:
    """Every config key with the value the trial trained with, defaults included."""
    try:
        return TrialConfig.from_dict({k: v for k, v in config.items() if k in TrialConfig.keys()}).to_dict()
    except Exception:  # noqa: BLE001 - a config the trial itself rejected: keep what was given
        return {key: config.get(key) for key in TrialConfig.keys()}


COMPLETED = ("finished", "early_stopped", "stopped")  # trials whose results count
# A trial's outcome in Parquet -> its MLflow run status (KILLED: ASHA stopped it to give its slot to others).
MLFLOW_STATUS = {"finished": "FINISHED", "early_stopped": "FINISHED", "stopped": "KILLED", "failed": "FAILED",
                 "diverged": "FAILED"}


def trial_status(last_result: dict[str, Any], *, errored: bool, max_epochs: int) -> str:
    """finished | early_stopped (patience) | stopped (by the scheduler) | failed (an exception) | diverged (NaN)."""
    if errored:
        return "failed"
    if last_result.get("diverged"):
        return "diverged"
    if int(last_result.get("epoch", 0)) >= max_epochs:
        return "finished"
    return "early_stopped" if last_result.get("early_stopped") else "stopped"


def epoch_rows(result_grid) -> list[dict[str, Any]]:
    """Every validated epoch of every trial: learning curves and ASHA rung survival for the report.

    A trial restored from a checkpoint may report an epoch twice; the last report wins.
    """
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    for result in result_grid:
        history = result.metrics_dataframe
        if history is None or "epoch" not in history:
            continue
        trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name
        for record in history.to_dict("records"):
            if record.get("epoch") is None or (isinstance(record["epoch"], float) and math.isnan(record["epoch"])):
                continue
            row = {"trial_id": trial_id, **{c: record.get(c, math.nan) for c in EPOCH_COLUMNS}}
            row["epoch"] = int(row["epoch"])
            rows[(trial_id, row["epoch"])] = row
    return [rows[key] for key in sorted(rows)]


def write_epochs(rows: list[dict[str, Any]], sweep_dir: Path) -> Path:
    schema = pa.schema([pa.field("trial_id", pa.string()), pa.field("epoch", pa.int64())]
                       + [pa.field(c, pa.float64()) for c in EPOCH_COLUMNS[1:]])
    return write_atomic(pa.Table.from_pylist(rows, schema=schema), Path(sweep_dir) / EPOCHS_FILE)


def write_atomic(table: pa.Table, path: Path) -> Path:
    """Readers never see half a file: write aside, then rename."""
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path


def read_trials(sweep_dir: Path, file: str = TRIALS_FILE) -> list[dict[str, Any]]:
    return pq.read_table(Path(sweep_dir) / file).to_pylist()


def read_epochs(sweep_dir: Path) -> list[dict[str, Any]]:
    path = Path(sweep_dir) / EPOCHS_FILE
    return pq.read_table(path).to_pylist() if path.exists() else []


def write_trials(rows: list[dict[str, Any]], sweep_dir: Path, file: str = TRIALS_FILE) -> Path:
    """Write trials.parquet atomically: readers never see half a file."""
    columns = list(BASE_COLUMNS) + list(TrialConfig.keys())
    table = pa.Table.from_pylist(rows, schema=_schema()) if rows else _schema().empty_table()
    return write_atomic(table.select(columns), Path(sweep_dir) / file)


def _schema() -> pa.Schema:
    types = {"epochs": pa.int64(), "best_val_top1": pa.float64(), "last_val_top1": pa.float64(),
             "last_val_loss": pa.float64(), "images_per_s": pa.float64(), "wall_s": pa.float64()}
    default = TrialConfig()
    config_types = {bool: pa.bool_(), int: pa.int64(), float: pa.float64(), str: pa.string()}
    fields = [pa.field(c, types.get(c, pa.string())) for c in BASE_COLUMNS]
    fields += [pa.field(k, config_types[type(getattr(default, k))]) for k in TrialConfig.keys()]
    return pa.schema(fields)


def pick_winner(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Best validation top-1 among trials that left a checkpoint; the test split plays no part."""
    candidates = [r for r in rows if r["checkpoint"] and r["status"] in COMPLETED
                  and not math.isnan(r["best_val_top1"])]
    return max(candidates, key=lambda r: r["best_val_top1"], default=None)


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[-1] if text else type(error).__name__)[:500]
