"""Tier 2 of `make gpu-check`: the real fractional-GPU sweep through Ray and MLflow, where those import.

    python -m tuner.run --space resnet_rsb --dataset digits --num-samples 16 --max-epochs 1 --gpus-per-trial auto
    ... the same at --gpus-per-trial 1, and 4 trials at --gpus-per-trial 0.25 (four packed trials)

Figure: the sweep's wall time at `auto` against that at 1 GPU per trial (the ratio: how much packing saves end to
end; no target).
Checks: each sweep ended, with one row per trial in trials.parquet and one child run per trial in MLflow.
Without a GPU, or without Ray, MLflow or Optuna, the section is skipped and says why.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gpucheck.report import check_row, figure_row, missing_row
from gpucheck.sections import Budget, Sizes, child_group, error_line, importable

NEEDED = ("ray", "mlflow", "optuna")
SWEEPS = (("auto", 16), ("1", 16), ("0.25", 4))  # (--gpus-per-trial, trials)
FIGURE = "tier2: sweep wall time at --gpus-per-trial auto vs 1, 16 trials (ratio: the speedup)"
ENDED = ("finished", "early_stopped")  # trials.parquet statuses of a trial that ran as asked
STOP_GRACE_S = 20.0  # after SIGTERM a sweep stops its trials cleanly; then it is killed


def sweep_command(gpus: str, trials: int, root: Path) -> list[str]:
    return [sys.executable, "-m", "tuner.run", "--space", "resnet_rsb", "--dataset", "digits", "--num-samples",
            str(trials), "--max-epochs", "1", "--gpus-per-trial", gpus, "--storage", str(root / "sweeps"),
            "--name", sweep_name(gpus), "--mlflow-uri", f"sqlite:///{(root / 'mlflow.db').resolve()}", "--seed", "0"]


def sweep_name(gpus: str) -> str:
    return f"gpus-{gpus.replace('.', '_')}"


def run_sweep(gpus: str, trials: int, root: Path, timeout: float) -> dict[str, Any]:
    """One real sweep in a subprocess (its own process group), stopped by SIGTERM at `timeout`; its summary."""
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(root / f"{sweep_name(gpus)}.log", "w") as log:
        proc = subprocess.Popen(sweep_command(gpus, trials, root), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        with child_group(proc.pid):
            code = wait_or_stop(proc, timeout)
    out = {"gpus_per_trial": gpus, "trials": trials, "returncode": code, "wall_s": time.perf_counter() - t0}
    try:
        out.update(summarize(root / "sweeps" / sweep_name(gpus)))
    except Exception as exc:  # noqa: BLE001 - a sweep that left no tables: its checks fail with this line
        out["error"] = error_line(exc)
    return out


def wait_or_stop(proc: subprocess.Popen, timeout: float) -> int:
    """The sweep's exit code; at `timeout` it is sent SIGTERM (a clean stop), and killed STOP_GRACE_S later."""
    try:
        return proc.wait(timeout=max(timeout, 1.0))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait()


def summarize(sweep_dir: Path) -> dict[str, Any]:
    """What the sweep left: trials.parquet's rows and statuses, and its MLflow parent run's child runs."""
    import mlflow
    import pyarrow.parquet as pq

    rows = pq.read_table(sweep_dir / "trials.parquet").to_pylist()
    record = json.loads((sweep_dir / "sweep.json").read_text())
    client = mlflow.MlflowClient(record["tracking_uri"])
    parent = record["parent_run_id"]
    experiment = client.get_run(parent).info.experiment_id
    children = client.search_runs([experiment], filter_string=f"tags.mlflow.parentRunId = '{parent}'",
                                  max_results=1000)
    return {"rows": len(rows), "statuses": {s: sum(r["status"] == s for r in rows) for s in {r["status"] for r in rows}},
            "trial_wall_s": sum(float(r.get("wall_s") or 0.0) for r in rows), "mlflow_child_runs": len(children),
            "state": record.get("state")}


def sweep_checks(runs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per sweep: it ended (exit 0), every trial ran as asked, and each is a row of trials.parquet and MLflow."""
    checks = []
    for gpus, run in runs.items():
        name = f"tier2: sweep at --gpus-per-trial {gpus}, {run['trials']} trials"
        if run.get("cut"):
            checks.append(check_row(name, "skipped", "cut by the time guard before it started"))
            continue
        ended = sum(run.get("statuses", {}).get(s, 0) for s in ENDED)
        ok = (run["returncode"] == 0 and run.get("rows") == run["trials"] == ended
              and run.get("mlflow_child_runs") == run["trials"])
        detail = (f"exit {run['returncode']}, {run.get('rows', 0)} rows in trials.parquet ({run.get('statuses', {})}), "
                  f"{run.get('mlflow_child_runs', 0)} MLflow child runs, {run['wall_s']:.0f} s"
                  + (f"; {run['error']}" if run.get("error") else ""))
        checks.append(check_row(name, "passed" if ok else "failed", detail))
    return checks


def sweeps(sizes: Sizes, budget: Budget, out: Path) -> dict[str, Any]:
    """The tier-2 section: skipped (saying why) without a GPU or without Ray, MLflow and Optuna."""
    missing = [m for m in NEEDED if not importable(m)]
    not_there = f"{', '.join(missing)} not importable" if missing else ""
    if not sizes.measured or missing:
        why = "; ".join(w for w in ("no GPU" if not sizes.measured else "", not_there) if w)
        return {"status": "skipped", "reason": why, "figures": [missing_row(FIGURE, f"skipped: {why}")],
                "checks": [], "missing_modules": missing}
    runs: dict[str, dict[str, Any]] = {}
    for gpus, trials in SWEEPS:
        if budget.spent(need=60.0):
            runs[gpus] = {"trials": trials, "cut": True}
            continue
        runs[gpus] = run_sweep(gpus, trials, out / "tier2", budget.left())
    auto, one = runs["auto"], runs["1"]
    if auto.get("cut") or one.get("cut") or auto["returncode"] or one["returncode"]:
        row = missing_row(FIGURE, "a sweep was cut or failed (see the checks)")
    else:
        row = figure_row(FIGURE, auto["wall_s"], one["wall_s"], ratio=one["wall_s"] / auto["wall_s"], unit="s",
                         baseline_is="at 1 GPU per trial")
    return {"figures": [row], "checks": sweep_checks(runs), "runs": runs}
