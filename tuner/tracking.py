"""MLflow: one parent run per sweep, one child run per trial, per-epoch metrics, the winner as a registered model.

Ray's own MLflowLoggerCallback has no parent/child runs, no KILLED status for trials ASHA stopped,
and no model registry step, hence this small callback over MlflowClient.
"""

from __future__ import annotations

import logging
import subprocess
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback

from trainables.config import TrialConfig
from trainables.errors import UserError

log = logging.getLogger(__name__)

EPOCH_METRICS = ("train_loss", "val_loss", "val_top1", "val_top5", "best_val_top1", "lr", "images_per_s", "epoch_s")


def connect(uri: str | None) -> "mlflow.MlflowClient":  # noqa: F821
    """Set the tracking URI (None: MLFLOW_TRACKING_URI, else MLflow's default) and check it answers."""
    import mlflow

    if uri:
        mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    try:
        client.search_experiments(max_results=1)
    except Exception as exc:
        raise UserError(f"MLflow at {mlflow.get_tracking_uri()} cannot be reached ({type(exc).__name__}); start "
                        f"it, or pass --mlflow-uri (e.g. sqlite:///mlflow.db)") from None
    return client


def start_parent_run(client, experiment: str, run_name: str, tags: dict[str, str],
                     params: dict[str, Any]) -> str:
    from mlflow.entities import Param, RunTag

    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    run = client.create_run(experiment_id, run_name=run_name, tags=tags)
    client.log_batch(run.info.run_id, params=[Param(k, _param_text(v)) for k, v in params.items()],
                     tags=[RunTag("sweep.role", "parent")])
    return run.info.run_id


def provenance_tags() -> dict[str, str]:
    import mlflow
    import optuna
    import ray
    import timm
    import torch

    tags = {f"version.{m.__name__}": m.__version__ for m in (torch, ray, timm, optuna, mlflow)}
    try:
        repo = Path(__file__).resolve().parent.parent
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5).stdout.strip()
        if commit:
            tags["mlflow.source.git.commit"] = commit
    except (OSError, subprocess.SubprocessError):
        pass
    return tags


class MlflowTrials(Callback):
    """Mirrors each Ray Tune trial into a child run of the sweep's parent run."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, max_epochs: int) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.max_epochs = max_epochs
        self.runs: dict[str, str] = {}  # trial_id -> run_id; kept in Tune's experiment state for --resume
        self.ended: set[str] = set()
        self._client = None
        self._warned = False

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_client": None}  # Ray pickles callbacks; a live client does not travel

    @property
    def client(self):
        if self._client is None:
            import mlflow

            self._client = mlflow.MlflowClient(self.tracking_uri)
        return self._client

    def _safely(self, what: str, fn, *args) -> None:
        """Tracking never takes a sweep down: Ray results and Parquet keep everything (tuner.sync replays)."""
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - any MLflow/network failure
            if not self._warned:
                log.warning("MLflow %s failed (%s: %s); the sweep goes on, results stay in Ray storage",
                            what, type(exc).__name__, exc)
                self._warned = True

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        self._safely("run start", self._start, trial)

    def _start(self, trial) -> None:
        from mlflow.entities import Param

        if trial.trial_id in self.runs:
            return  # a resumed or retried trial keeps its run
        run = self.client.create_run(self.experiment_id, run_name=f"trial_{trial.trial_id}",
                                     tags={"mlflow.parentRunId": self.parent_run_id, "trial_id": trial.trial_id})
        self.runs[trial.trial_id] = run.info.run_id
        config = {k: v for k, v in trial.config.items() if k in TrialConfig.keys()}
        self.client.log_batch(run.info.run_id, params=[Param(k, _param_text(v)) for k, v in config.items()])

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        self._safely("metric logging", self._log_result, trial, result)

    def _log_result(self, trial, result: dict) -> None:
        from mlflow.entities import Metric

        run_id = self.runs.get(trial.trial_id)
        if run_id is None:
            self._start(trial)
            run_id = self.runs[trial.trial_id]
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(result[k]), now, int(result["epoch"])) for k in EPOCH_METRICS if k in result]
        self.client.log_batch(run_id, metrics=metrics)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        result = trial.last_result or {}
        if result.get("diverged"):
            status, reason = "FAILED", "diverged: non-finite training loss"
        elif result.get("epoch", 0) >= trial.config.get("max_epochs", self.max_epochs):
            status, reason = "FINISHED", ""
        else:
            status, reason = "KILLED", f"stopped early by the scheduler after epoch {result.get('epoch', 0)}"
        self._safely("run end", self._end, trial, status, reason)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        error = trial.error_file or ""
        self._safely("run end", self._end, trial, "FAILED", f"error: see {error}")

    def _end(self, trial, status: str, reason: str) -> None:
        run_id = self.runs.get(trial.trial_id)
        if run_id is None or trial.trial_id in self.ended:
            return
        if reason:
            self.client.set_tag(run_id, "end_reason", reason)
        self.client.set_tag(run_id, "node_id", str((trial.last_result or {}).get("node_id", "")))
        self.client.set_terminated(run_id, status=status)
        self.ended.add(trial.trial_id)

    def get_state(self) -> dict | None:
        return {"runs": dict(self.runs), "ended": sorted(self.ended)}

    def set_state(self, state: dict) -> None:
        self.runs = dict(state.get("runs", {}))
        self.ended = set(state.get("ended", []))


def trial_run_id(client, parent_run_id: str, trial_id: str) -> str | None:
    parent = client.get_run(parent_run_id)
    runs = client.search_runs([parent.info.experiment_id], max_results=1,
                              filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' and "
                                            f"tags.trial_id = '{trial_id}'")
    return runs[0].info.run_id if runs else None


def log_winner(tracking_uri: str, parent_run_id: str, trial_id: str, model, test: dict[str, float],
               registered_name: str, input_example) -> str | None:
    """Winner's test metrics on the parent run and its trial's run; its weights as a registered PyTorch model."""
    import mlflow
    import timm
    import torch

    client = mlflow.MlflowClient(tracking_uri)
    for key, value in test.items():
        client.log_metric(parent_run_id, key, value)
    client.set_tag(parent_run_id, "winner_trial_id", trial_id)
    winner_run_id = trial_run_id(client, parent_run_id, trial_id)
    if winner_run_id:
        client.set_tag(winner_run_id, "sweep.winner", "true")
        for key, value in test.items():
            client.log_metric(winner_run_id, key, value)
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(run_id=parent_run_id):
        info = mlflow.pytorch.log_model(
            model, name="model", registered_model_name=registered_name, input_example=input_example,
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"timm=={timm.__version__}"])
    return info.model_uri


def end_parent_run(tracking_uri: str, parent_run_id: str, status: str) -> None:
    import mlflow

    mlflow.MlflowClient(tracking_uri).set_terminated(parent_run_id, status=status)


def _param_text(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."
