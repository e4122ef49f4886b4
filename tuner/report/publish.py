"""The report's files (and export's) attached to the sweep's parent MLflow run, giving up fast when MLflow is gone."""

from __future__ import annotations

import os
import re
from pathlib import Path

from trainables.errors import error_line
from tuner.folder import Sweep


def tracking_uri_of(sweep: Sweep) -> str | None:
    """Where the sweep tracked: sweep.json's tracking URI, else the spec's --mlflow-uri."""
    return sweep.record.tracking_uri or sweep.spec.mlflow_uri


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
    uri = tracking_uri or tracking_uri_of(sweep)
    run_id = sweep.record.parent_run_id
    if not run_id or not uri:
        return "the sweep record names no MLflow parent run; nothing attached"
    try:
        client = quick_mlflow(uri)
        client.get_run(run_id)
        for file in files:
            client.log_artifact(run_id, str(file), artifact_path=artifact_path)
    except Exception as exc:  # noqa: BLE001 - unreachable server, missing run, denied upload: all one warning
        return f"could not attach to MLflow run {run_id} at {uri} ({error_line(exc, 200)})"
    return None
