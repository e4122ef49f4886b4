"""Ray Tune's results as our rows: one per trial (its status, figures, best checkpoint, config), one per epoch."""

from __future__ import annotations

import enum
import math
import numbers
import re
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
# Ray's memory monitor killed the trial's worker (Ray's OutOfMemoryError; an actor's exit type and detail)
MONITOR_KILL = re.compile(r"running low on memory|killed due to memory pressure|NODE_OUT_OF_MEMORY|Memory on the node")
# the worker died by SIGKILL, which on a node short of memory is the kernel's OOM killer (Ray names it first)
KERNEL_KILL = re.compile(r"killed by the OOM killer|SIGKILL|signal 9\b|exit code -?9\b")
# "was 22.80GB used / 23.20GB limit (0.98)" (Ray 2.60), "was 27.71GB / 28.80GB (0.962273), which exceeds the
# memory usage threshold of 0.95" (earlier Rays)
NODE_USE = re.compile(r"was (?P<used>\d+(?:\.\d+)?) ?GB (?:used )?/ (?P<of>\d+(?:\.\d+)?) ?GB(?P<limit> limit)?"
                      r"(?: \([\d.]+\))?(?:, which exceeds the memory usage threshold of "
                      r"(?P<threshold>\d+(?:\.\d+)?))?")
WORKER_USE = re.compile(r"(?<![\w])(?:actual )?memory used=(\d+(?:\.\d+)?) ?GB")
ASKED = re.compile(r"required resources=\{[^}]*?\bmemory\W{1,3}(\d+(?:\.\d+)?(?:e\+?\d+)?) ?([KMGT]i?B)?")
UNITS = {"KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12, "KiB": 2 ** 10, "MiB": 2 ** 20, "GiB": 2 ** 30, "TiB": 2 ** 40}
ADVICE = "Lower batch_size or image_size, or raise --memory-per-trial"


def error_status(error: BaseException | str | None) -> TrialStatus:
    """FAILED, or OOM when the error says the trial ran out of memory (Ray's memory monitor, the kernel's OOM
    killer, CUDA, the allocator)."""
    text = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error or "")
    oom = any(marker in text for marker in OOM_MARKERS) or MONITOR_KILL.search(text) or KERNEL_KILL.search(text)
    return TrialStatus.OOM if oom else TrialStatus.FAILED


def failure_line(error: BaseException | str | None, asked_bytes: float = 0) -> str:
    """The one line a failed trial is shown and recorded with: the exception's own (last) line, or for a worker
    Ray's memory monitor or the kernel killed, what ran out, what the trial asked for (`asked_bytes`, else what
    Ray's message says) and what the node had: never Ray's multi-line message or its documentation paragraph."""
    text = str(error if error is not None else "").strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    own = next((line for line in reversed(lines) if "out of memory (" in line), None)  # packing's guard: one line
    if own is not None or not (MONITOR_KILL.search(text) or KERNEL_KILL.search(text)):
        fallback = type(error).__name__ if isinstance(error, BaseException) else ""
        return (own or (lines[-1] if lines else fallback))[:500]
    asked = asked_bytes or _asked_bytes(text)
    asked_text = f"; it asked Ray for {asked / 2 ** 30:.2f} GiB" if asked else ""  # unknown: not guessed
    if MONITOR_KILL.search(text):
        used = WORKER_USE.search(text)
        node = NODE_USE.search(text)
        what = "Ray's memory monitor killed its worker" + (f" (using {used.group(1)} GB)" if used else "")
        if node and node["limit"]:
            what += f" with the node's memory at {node['used']} GB used of its {node['of']} GB limit"
        elif node:
            threshold = f", past Ray's kill threshold of {node['threshold']}" if node["threshold"] else ""
            what += f" with the node's memory at {node['used']} of {node['of']} GB{threshold}"
    else:
        what = "its worker process was killed (SIGKILL), most likely by the kernel's OOM killer on a node out of memory"
    return f"out of memory (host): {what}{asked_text}. {ADVICE}"


def _asked_bytes(text: str) -> float:
    """The `memory` a killed worker's lease asked for, where Ray's message lists its required resources."""
    found = ASKED.search(text)
    return float(found.group(1)) * UNITS.get(found.group(2) or "", 1) if found else 0.0


def last_failure(error_file: str | None) -> str:
    """What the trial's error file says of its last failure (Tune appends "Failure # N (occurred at ...)" and the
    error's text, several lines for Ray's own errors, for each)."""
    try:
        with open(error_file) as f:
            text = f.read()
    except (OSError, TypeError):
        return ""
    return re.split(r"^Failure # \d+ \(occurred at [^)]*\)\s*$", text, flags=re.M)[-1].strip()


def asked_memory(trial) -> float:
    """The memory (bytes) the trial asked of Ray, from its resources; 0 when it asked for none."""
    resources = getattr(getattr(trial, "placement_group_factory", None), "required_resources", None) or {}
    return float(resources.get("memory", 0) or 0)


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


def trial_rows(result_grid, asked_bytes: float = 0) -> list[dict[str, Any]]:
    """One row per trial from Ray Tune's ResultGrid: outcome, timing, where it ran, best checkpoint, config.
    `asked_bytes`: the memory each trial asked of Ray (said in an out-of-memory row's error)."""
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
            "error": (failure_line(result.error, asked_bytes) if result.error is not None else
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
