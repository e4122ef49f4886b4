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

from trainables.classify import EPOCH_METRICS
from trainables.config import TrialConfig
from trainables.errors import UserError
from tuner.callbacks import DriverCallback
from tuner.folder import FINAL_FILE
from tuner.results import TrialStatus, trial_status

log = logging.getLogger(__name__)

# A trial's status -> its MLflow run status (KILLED: ASHA stopped it to give its slot to others).
MLFLOW_STATUS = {TrialStatus.FINISHED: "FINISHED", TrialStatus.EARLY_STOPPED: "FINISHED",
                 TrialStatus.STOPPED: "KILLED", TrialStatus.FAILED: "FAILED", TrialStatus.DIVERGED: "FAILED",
                 TrialStatus.OOM: "FAILED", TrialStatus.INTERRUPTED: "KILLED"}


def connect(uri: str | None) -> "mlflow.MlflowClient":  # noqa: F821
    """Set the tracking URI (None: MLFLOW_TRACKING_URI, else MLflow's default) and check it answers."""
    import mlflow

    if uri:
        mlflow.set_tracking_uri(uri)
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # e.g. a new SQLite store's table-creation lines
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


class MlflowTrials(DriverCallback):
    """Mirrors each Ray Tune trial into a child run of the sweep's parent run."""

    role = "mlflow"

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, max_epochs: int,
                 tags: dict[str, str] | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.tags = dict(tags or {})  # on every child run, e.g. sweep.role=reseed
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.max_epochs = max_epochs
        self.runs: dict[str, str] = {}  # trial_id -> run_id; kept in Tune's experiment state for --resume
        self.ended: set[str] = set()
        self._client = None
        self.offline = False
        self._logged: dict[str, set[int]] = {}  # run_id -> epochs logged (read once per run and driver session)

    @property
    def client(self):
        if self._client is None:
            import mlflow

            self._client = mlflow.MlflowClient(self.tracking_uri)
        return self._client

    def _safely(self, what: str, fn, *args) -> None:
        """Tracking never takes a sweep down: after the first MLflow failure the sweep goes on offline (each
        call would otherwise wait out MLflow's retries); Ray results and Parquet keep everything for tuner.sync."""
        if self.offline:
            return
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - any MLflow/network failure
            self.offline = True
            log.warning("MLflow %s failed (%s); tracking is off for the rest of this sweep, results stay in Ray "
                        "storage: replay them later with python -m tuner.sync", what, type(exc).__name__)

    def _run_of(self, trial) -> str:
        if trial.trial_id not in self.runs:
            self.runs[trial.trial_id] = ensure_trial_run(self.client, self.experiment_id, self.parent_run_id,
                                                         trial.trial_id, trial.config, self.tags)
        return self.runs[trial.trial_id]

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        self._safely("run start", self._run_of, trial)

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        self._safely("metric logging", self._log, trial, result)

    def _log(self, trial, result: dict) -> None:
        run_id = self._run_of(trial)
        if run_id not in self._logged:  # after a resume, epochs logged before the crash may be re-run: skip them
            self._logged[run_id] = logged_epochs(self.client, run_id)
        if int(result["epoch"]) not in self._logged[run_id]:
            log_epoch(self.client, run_id, result)
            self._logged[run_id].add(int(result["epoch"]))

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._safely("run end", self._end, trial, False)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._safely("run end", self._end, trial, True)

    def _end(self, trial, errored: bool) -> None:
        if trial.trial_id in self.ended:
            return
        result = trial.last_result or {}
        reason = _error_line(trial) if errored else None
        status = trial_status(result, errored=errored, max_epochs=trial.config.get("max_epochs", self.max_epochs),
                              error=reason)
        end_trial_run(self.client, self._run_of(trial), status, result, reason)
        self.ended.add(trial.trial_id)

    def reopen_parent(self, rounds: int) -> None:
        """A grown sweep's parent run is RUNNING again while its added trials run."""
        self._safely("parent run update", lambda: (
            self.client.update_run(self.parent_run_id, status="RUNNING"),
            self.client.set_tag(self.parent_run_id, "rounds", str(rounds + 1))))

    def get_state(self) -> dict | None:
        return {"runs": dict(self.runs), "ended": sorted(self.ended)}

    def set_state(self, state: dict) -> None:
        self.runs = dict(state.get("runs", {}))
        self.ended = set(state.get("ended", []))


def ensure_trial_run(client, experiment_id: str, parent_run_id: str, trial_id: str, config: dict,
                     tags: dict[str, str] | None = None) -> str:
    """The trial's child run: found by its tags if it exists (after a crash or for tuner.sync), else created."""
    from mlflow.entities import Param

    existing = trial_run_id(client, parent_run_id, trial_id)
    if existing:
        return existing
    run = client.create_run(experiment_id, run_name=f"trial_{trial_id}",
                            tags={"mlflow.parentRunId": parent_run_id, "trial_id": trial_id, **(tags or {})})
    params = {k: v for k, v in config.items() if k in TrialConfig.keys()}
    client.log_batch(run.info.run_id, params=[Param(k, _param_text(v)) for k, v in params.items()])
    return run.info.run_id


def logged_epochs(client, run_id: str) -> set[int]:
    return {m.step for m in client.get_metric_history(run_id, "train_loss")}


def log_epoch(client, run_id: str, result: dict) -> None:
    from mlflow.entities import Metric

    stamp = int(result.get("timestamp", time.time()) * 1000)
    metrics = [Metric(k, float(result[k]), stamp, int(result["epoch"])) for k in EPOCH_METRICS
               if k in result and result[k] is not None]
    client.log_batch(run_id, metrics=metrics)


def end_trial_run(client, run_id: str, status: str, last_result: dict, reason: str | None) -> None:
    """Close a trial's run: FINISHED, KILLED (stopped by ASHA) or FAILED, with why and where it ran."""
    status = TrialStatus(status)
    if status is TrialStatus.DIVERGED:
        reason = f"diverged: non-finite training loss at epoch {last_result.get('epoch')}"
    elif status is TrialStatus.STOPPED:
        reason = f"stopped early by the scheduler after epoch {last_result.get('epoch', 0)}"
    elif status is TrialStatus.EARLY_STOPPED:
        reason = f"early stopped (patience) after epoch {last_result.get('epoch')}"
    client.set_tag(run_id, "outcome", status.value)
    if reason:
        client.set_tag(run_id, "end_reason", reason)
    client.set_tag(run_id, "node_id", str(last_result.get("node_id", "")))
    client.set_terminated(run_id, status=MLFLOW_STATUS[status])


def retire_lost_runs(client, parent_run_id: str, trial_ids: set[str]) -> int:
    """Child runs of trials Ray lost in a driver crash (started after its last state save, then re-sampled on
    resume) are closed and soft-deleted, so MLflow holds exactly one run per trial; `mlflow gc` or the UI's
    restore can still reach them."""
    parent = client.get_run(parent_run_id)
    lost = [r for r in client.search_runs([parent.info.experiment_id],
                                          filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'")
            if r.data.tags.get("trial_id") not in trial_ids]
    for run in lost:
        client.set_tag(run.info.run_id, "end_reason", "lost: started just before a driver crash and not in Ray's "
                                                      "saved state; its slot was re-sampled on resume")
        client.set_terminated(run.info.run_id, status="KILLED")
        client.delete_run(run.info.run_id)
    return len(lost)


def trial_run_id(client, parent_run_id: str, trial_id: str) -> str | None:
    parent = client.get_run(parent_run_id)
    runs = client.search_runs([parent.info.experiment_id], max_results=1,
                              filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' and "
                                            f"tags.trial_id = '{trial_id}'")
    return runs[0].info.run_id if runs else None


def log_finals(client, parent_run_id: str, finals: list, sweep_dir: Path) -> None:
    """Each family's test figures on the parent run (metric suffix: the family) and on the tested trial's run,
    with its confusion matrix and per-class accuracy; final.parquet on the parent run."""
    from mlflow.entities import Metric

    stamp = int(time.time() * 1000)
    for f in finals:
        client.log_batch(parent_run_id, metrics=[Metric(f"{k}.{f.family}", v, stamp, 0)
                                                 for k, v in f.test.metrics().items()])
        client.log_artifact(parent_run_id, str(Path(sweep_dir) / f.confusion_png), artifact_path="test")
        run_id = trial_run_id(client, parent_run_id, f.trial_id)
        if run_id:
            per_class = [Metric(f"test_top1.class_{i}", v, stamp, 0) for i, v in enumerate(f.test.per_class_top1)]
            client.log_batch(run_id, metrics=[Metric(k, v, stamp, 0) for k, v in f.test.metrics().items()]
                             + per_class[:900])  # MLflow takes 1000 metrics per batch
            client.set_tag(run_id, "sweep.tested", "true")
            client.log_artifact(run_id, str(Path(sweep_dir) / f.confusion_png), artifact_path="test")
        if f.seeds > 1:
            client.log_batch(parent_run_id, metrics=[
                Metric(f"{k}.{f.family}", v, stamp, 0) for k, v in
                (("val_top1_mean", f.val_top1_mean), ("val_top1_std", f.val_top1_std),
                 ("test_top1_mean", f.test_top1_mean), ("test_top1_std", f.test_top1_std))])
    final_file = Path(sweep_dir) / FINAL_FILE
    if final_file.exists():
        client.log_artifact(parent_run_id, str(final_file), artifact_path="test")


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
    # MLflow 3 saves "pt2" (torch.export) by default: a graph for inputs shaped like input_example (the signature
    # is inferred from it), without the model's attributes, so what tuner.predict needs travels as metadata
    metadata = {"input_size": int(input_example.shape[-1]),
                "classes": [str(c) for c in getattr(model, "classes", [])]}
    with mlflow.start_run(run_id=parent_run_id):
        info = mlflow.pytorch.log_model(
            model, name="model", registered_model_name=registered_name, input_example=input_example,
            metadata=metadata,
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"timm=={timm.__version__}"])
    return info.model_uri


def current_uri() -> str:
    import mlflow

    return mlflow.get_tracking_uri()


def end_parent_run(tracking_uri: str, parent_run_id: str, status: str) -> None:
    import mlflow

    mlflow.MlflowClient(tracking_uri).set_terminated(parent_run_id, status=status)


def _error_line(trial) -> str:
    """The last line of the trial's traceback (the exception), and where the full one is."""
    try:
        with open(trial.error_file) as f:
            lines = [line.strip() for line in f if line.strip()]
        return f"{lines[-1][:400]} (full traceback: {trial.error_file})"
    except (OSError, TypeError, IndexError):
        return f"see {trial.error_file}"


def _param_text(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."
