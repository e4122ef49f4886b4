"""MLflow: one parent run per sweep, one child run per trial with its per-epoch metrics.

Ray's own MLflowLoggerCallback has no parent/child runs, no outcome of a trial ASHA stopped, and logs from Tune's
loop (an MLflow outage would freeze the sweep), hence this callback over MlflowClient, which logs from a thread of
its own. The winner's registered model and the test figures are tuner.registry's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from trainables.classify import EPOCH_METRICS
from trainables.config import TrialConfig
from trainables.errors import UserError, error_line
from tuner.callbacks import DriverCallback
from tuner.results import TrialStatus, asked_memory, failure_line, last_failure, trial_status

log = logging.getLogger(__name__)

# A trial's status -> its MLflow run status. A trial ASHA stopped is FINISHED (it did what it was given; its
# `outcome` tag says `stopped`), as early-stopped ones are: the UI's red cross is for failures. An interrupted
# trial is KILLED until --resume continues it.
MLFLOW_STATUS = {TrialStatus.FINISHED: "FINISHED", TrialStatus.EARLY_STOPPED: "FINISHED",
                 TrialStatus.STOPPED: "FINISHED", TrialStatus.FAILED: "FAILED", TrialStatus.DIVERGED: "FAILED",
                 TrialStatus.OOM: "FAILED", TrialStatus.INTERRUPTED: "KILLED", TrialStatus.INFEASIBLE: "FINISHED"}
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}  # the UI opens on runs, not GenAI views
# An unreachable server costs seconds, not MLflow's default minutes of retries (7 retries, 120 s timeouts).
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
               "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
FLUSH_S = 30.0  # at most this long to send what is queued when an experiment ends


def connect(uri: str | None) -> "mlflow.MlflowClient":  # noqa: F821
    """Set the tracking URI (None: MLFLOW_TRACKING_URI, else MLflow's default) and check it answers, within
    about 10 s; a SQLite store that is not a database or cannot be written is one line too."""
    import mlflow

    for key, value in HTTP_LIMITS.items():
        os.environ.setdefault(key, value)
    if uri:
        mlflow.set_tracking_uri(uri)
    uri = absolute_sqlite(mlflow.get_tracking_uri())  # MLflow's default is ./mlflow.db: named absolutely
    mlflow.set_tracking_uri(uri)
    check_sqlite_store(uri)
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # e.g. a new SQLite store's table-creation lines
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        with _creating_store(uri):  # two drivers making one new SQLite store: one at a time
            client = mlflow.MlflowClient()
            client.search_experiments(max_results=1)
        return client
    except Exception as exc:  # noqa: BLE001 - network, database, permission: all one line
        raise UserError(f"MLflow at {uri} cannot be reached ({error_line(exc, 150)}); start it, or pass "
                        f"--mlflow-uri (e.g. sqlite:///mlflow.db)") from None


@contextlib.contextmanager
def _creating_store(uri: str) -> Iterator[None]:
    """For a sqlite:/// store, hold a lock beside it while MLflow creates or migrates its tables."""
    match = re.match(r"sqlite:///(.+)$", uri or "")
    if not match:
        yield
        return
    import fcntl

    with open(f"{match.group(1)}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def absolute_sqlite(uri: str) -> str:
    """sqlite:///relative.db as an absolute path, so the record names the same store from any folder."""
    match = re.match(r"sqlite:///(?!/)(.+)$", uri)
    return f"sqlite:///{Path(match.group(1)).resolve()}" if match else uri


def check_sqlite_store(uri: str) -> None:
    """A sqlite:/// store must be an SQLite database we can write (or not exist yet, in a writable folder)."""
    match = re.match(r"sqlite:///(.+)$", uri or "")
    if not match:
        return
    path = Path(match.group(1))
    if path.exists():
        with open(path, "rb") as f:
            head = f.read(16)
        if head and head != b"SQLite format 3\x00":
            raise UserError(f"--mlflow-uri {uri}: {path} is not an SQLite database; point --mlflow-uri at another "
                            f"file (a new one is created) or at a tracking server")
        if not os.access(path, os.W_OK) or not os.access(path.parent, os.W_OK):
            raise UserError(f"--mlflow-uri {uri}: {path} is read-only (SQLite also writes a journal beside it); "
                            f"make it and its folder writable, or use another store")
    elif not os.access(path.parent if path.parent.exists() else Path("."), os.W_OK):
        raise UserError(f"--mlflow-uri {uri}: cannot create {path} (its folder is missing or read-only)")


def current_uri() -> str:
    import mlflow

    return mlflow.get_tracking_uri()


def experiment_id_for(client, name: str) -> str:
    """The experiment's id, created as a model-training experiment when it is new."""
    found = client.get_experiment_by_name(name)
    if found is None:
        return client.create_experiment(name, tags=EXPERIMENT_KIND)
    if "mlflow.experimentKind" not in found.tags:
        client.set_experiment_tag(found.experiment_id, *next(iter(EXPERIMENT_KIND.items())))
    return found.experiment_id


def start_parent_run(client, experiment: str, run_name: str, tags: dict[str, str],
                     params: dict[str, Any]) -> str:
    from mlflow.entities import Param, RunTag

    run = client.create_run(experiment_id_for(client, experiment), run_name=run_name, tags=tags)
    client.log_batch(run.info.run_id, params=[Param(k, _param_text(v)) for k, v in params.items()],
                     tags=[RunTag("sweep.role", "parent")])
    return run.info.run_id


def find_parent_run(client, experiment: str, uid: str) -> str | None:
    """The parent run made for the sweep record `uid` (by a driver killed before it recorded the run's id)."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = client.search_runs([found.experiment_id], filter_string=f"tags.`sweep.uid` = '{uid}'", max_results=1)
    return runs[0].info.run_id if runs else None


def end_parent_run(tracking_uri: str, parent_run_id: str, status: str, state: str | None = None,
                   reason: str | None = None) -> None:
    """Close the sweep's parent run (FINISHED, FAILED, or KILLED when stopped), with the sweep's state."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    if state:
        client.set_tag(parent_run_id, "sweep.state", state)
    if reason:
        client.set_tag(parent_run_id, "end_reason", reason)
    client.set_terminated(parent_run_id, status=status)


def runs_page(tracking_uri: str, experiment_id: str) -> str:
    """The MLflow UI's page of the experiment's runs (each sweep a parent run, its trials nested under it), in the
    model-training view: MLflow 3 otherwise opens on its GenAI overview. For a local store, the page of
    `mlflow ui` (which serves on http://127.0.0.1:5000)."""
    base = tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def ui_command(tracking_uri: str) -> str | None:
    """How to see a local store in the browser (None: a tracking server has its own UI)."""
    if tracking_uri.startswith(("http://", "https://")):
        return None
    return f"mlflow ui --backend-store-uri {tracking_uri}"


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
    """Mirrors each Ray Tune trial into a child run of the sweep's parent run.

    Tune's loop only queues: a thread of this callback's own talks to MLflow, so a slow or dead server never holds
    up trials or the live view. After the first failure the sweep goes on offline; Ray's results and the Parquet
    tables keep everything, and tuner.sync replays it."""

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
        self.offline = False
        self._client = None
        self._logged: dict[str, set[int]] = {}  # run_id -> epochs logged (read once per run and driver session)
        self._queue: queue.Queue | None = None
        self._lock = threading.Lock()

    @property
    def client(self):
        if self._client is None:
            import mlflow

            self._client = mlflow.MlflowClient(self.tracking_uri)
        return self._client

    # --- the queue and its thread --------------------------------------------------------------------------------

    def submit(self, what: str, fn: Callable, *args) -> None:
        """Run fn(*args) on the logging thread, in order; nothing once offline."""
        if self.offline:
            return
        with self._lock:
            if self._queue is None:
                self._queue = queue.Queue()
                threading.Thread(target=self._work, name="mlflow-trials", daemon=True).start()
        self._queue.put((what, fn, args))

    def _work(self) -> None:
        while True:
            what, fn, args = self._queue.get()
            try:
                if not self.offline:
                    fn(*args)
            except Exception as exc:  # noqa: BLE001 - any MLflow/network failure
                self.offline = True
                log.warning("MLflow %s failed (%s); tracking is off for the rest of this sweep, results stay in "
                            "Ray storage: replay them later with python -m tuner.sync", what, type(exc).__name__)
            finally:
                self._queue.task_done()

    def flush(self, timeout: float = FLUSH_S) -> bool:
        """Wait (at most `timeout`) for what is queued to reach MLflow; False (and offline) when it did not."""
        if self._queue is None:
            return not self.offline
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.05)
        if self._queue.unfinished_tasks:
            self.offline = True
        return not self.offline

    # --- Tune's events ---------------------------------------------------------------------------------------

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        self.ended.discard(trial.trial_id)  # a failed trial Ray runs again (--resume): it will end again
        self.submit("run start", self._start, trial.trial_id, dict(trial.config))

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        self.submit("metric logging", self._log, trial.trial_id, dict(trial.config), dict(result))

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._end(trial, errored=False)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._end(trial, errored=True)

    def on_experiment_end(self, trials: list, **info) -> None:
        self.flush()

    def _end(self, trial, errored: bool) -> None:
        result = dict(trial.last_result or {})
        if trial.trial_id in self.ended or not (errored or "epoch" in result):
            return  # never started (the sweep stopped first): no run, as it is no row of trials.parquet
        reason = _error_line(trial) if errored else None
        status = trial_status(result, errored=errored, max_epochs=trial.config.get("max_epochs", self.max_epochs),
                              error=reason)
        self.ended.add(trial.trial_id)
        self.submit("run end", lambda: end_trial_run(self.client, self._run_of(trial.trial_id, trial.config),
                                                     status, result, reason))

    # --- on the logging thread -------------------------------------------------------------------------------------

    def _run_of(self, trial_id: str, config: dict) -> str:
        if trial_id not in self.runs:
            run_id = ensure_trial_run(self.client, self.experiment_id, self.parent_run_id, trial_id, config,
                                      self.tags)
            with self._lock:
                self.runs[trial_id] = run_id
        return self.runs[trial_id]

    def _start(self, trial_id: str, config: dict) -> None:
        run_id = self._run_of(trial_id, config)
        if trial_id not in self.ended and self.client.get_run(run_id).info.status != "RUNNING":
            self.client.update_run(run_id, status="RUNNING")  # an interrupted trial, continued by --resume

    def _log(self, trial_id: str, config: dict, result: dict) -> None:
        run_id = self._run_of(trial_id, config)
        if run_id not in self._logged:  # after a resume, epochs logged before the crash may be re-run: skip them
            self._logged[run_id] = logged_epochs(self.client, run_id)
        if int(result["epoch"]) not in self._logged[run_id]:
            log_epoch(self.client, run_id, result)
            self._logged[run_id].add(int(result["epoch"]))

    # --- the driver's own calls ----------------------------------------------------------------------------------

    def reopen_parent(self, rounds: int) -> None:
        """A resumed or grown sweep's parent run is RUNNING again while its trials run."""
        self.submit("parent run update", lambda: (
            self.client.update_run(self.parent_run_id, status="RUNNING"),
            self.client.set_tag(self.parent_run_id, "rounds", str(rounds + 1))))

    def end_unfinished(self, rows: list[dict], status: TrialStatus, reason: str) -> None:
        """Close the runs of trials a stop cut short (Ray ends them without on_trial_complete): interrupted ones
        stay out of `ended`, so their real end after --resume closes them again with its own status."""
        self.flush()  # their runs' creation may still be queued
        for row in rows:
            run_id = self.runs.get(row["trial_id"])
            if run_id and row["trial_id"] not in self.ended:
                last = {"epoch": row["epochs"], "node_id": row["node_id"]}
                self.submit("run end", end_trial_run, self.client, run_id, status, last, reason)
                if status is not TrialStatus.INTERRUPTED:
                    self.ended.add(row["trial_id"])
        self.flush()

    def get_state(self) -> dict | None:
        with self._lock:
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


def trial_run_id(client, parent_run_id: str, trial_id: str) -> str | None:
    parent = client.get_run(parent_run_id)
    runs = client.search_runs([parent.info.experiment_id], max_results=1,
                              filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' and "
                                            f"tags.trial_id = '{trial_id}'")
    return runs[0].info.run_id if runs else None


def child_runs(client, parent_run_id: str) -> list:
    parent = client.get_run(parent_run_id)
    return client.search_runs([parent.info.experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'", max_results=50_000)


def logged_epochs(client, run_id: str) -> set[int]:
    return {m.step for m in client.get_metric_history(run_id, "train_loss")}


def log_epoch(client, run_id: str, result: dict) -> None:
    from mlflow.entities import Metric

    stamp = int(result.get("timestamp", time.time()) * 1000)
    metrics = [Metric(k, float(result[k]), stamp, int(result["epoch"])) for k in EPOCH_METRICS
               if k in result and result[k] is not None]
    client.log_batch(run_id, metrics=metrics)


def end_trial_run(client, run_id: str, status: str, last_result: dict, reason: str | None) -> None:
    """Close a trial's run with its status and outcome, why it ended, and where it ran."""
    status = TrialStatus(status)
    if status is TrialStatus.DIVERGED:
        reason = f"diverged: non-finite training loss at epoch {last_result.get('epoch')}"
    elif status is TrialStatus.STOPPED:
        reason = reason or f"stopped early by the scheduler after epoch {last_result.get('epoch', 0)}"
    elif status is TrialStatus.EARLY_STOPPED:
        reason = f"early stopped (patience) after epoch {last_result.get('epoch')}"
    elif status is TrialStatus.INFEASIBLE:
        reason = "never trained: its footprint breaks a cost budget (--constraint)"
    elif status is TrialStatus.INTERRUPTED:
        reason = f"interrupted after epoch {last_result.get('epoch', 0)}: {reason}"
    client.set_tag(run_id, "outcome", status.value)
    if reason:
        client.set_tag(run_id, "end_reason", reason)
    client.set_tag(run_id, "node_id", str(last_result.get("node_id", "")))
    client.set_terminated(run_id, status=MLFLOW_STATUS[status])


def reconcile_runs(client, parent_run_id: str, rows: list[dict]) -> int:
    """Make each trial's run end as its trials.parquet row says (a trial that failed, then finished on
    --resume; one closed by a crash; one whose start the callback never saw, as when a budget ends the sweep as
    it starts: its run is made now); returns how many were mended. Called once the trials' logging is flushed."""
    runs = {r.data.tags.get("trial_id"): r for r in child_runs(client, parent_run_id)}
    mended = 0
    for row in rows:
        run = runs.get(row["trial_id"])
        status = TrialStatus(row["status"])
        if run is not None and (run.data.tags.get("outcome") == status.value
                                and run.info.status == MLFLOW_STATUS[status]):
            continue
        if run is None:
            experiment_id = client.get_run(parent_run_id).info.experiment_id
            run_id = ensure_trial_run(client, experiment_id, parent_run_id, row["trial_id"], row)
        else:
            run_id = run.info.run_id
        end_trial_run(client, run_id, status, {"epoch": row["epochs"], "node_id": row["node_id"]},
                      row.get("error"))
        mended += 1
    return mended


def retire_lost_runs(client, parent_run_id: str, trial_ids: set[str]) -> int:
    """Child runs of trials Ray lost in a driver crash (started after its last state save, then re-sampled on
    resume) are closed and soft-deleted, so MLflow holds exactly one run per trial; `mlflow gc` or the UI's
    restore can still reach them."""
    lost = [r for r in child_runs(client, parent_run_id) if r.data.tags.get("trial_id") not in trial_ids]
    for run in lost:
        client.set_tag(run.info.run_id, "end_reason", "lost: started just before a driver crash and not in Ray's "
                                                      "saved state; its slot was re-sampled on resume")
        client.set_terminated(run.info.run_id, status="KILLED")
        client.delete_run(run.info.run_id)
    return len(lost)


def _error_line(trial) -> str:
    """The trial's one failure line (its exception's, or what ran out for a worker Ray or the kernel killed, never
    Ray's paragraph) and where the full traceback is."""
    line = failure_line(last_failure(trial.error_file), asked_memory(trial))
    return f"{line[:400]} (full traceback: {trial.error_file})" if line else f"see {trial.error_file}"


def _param_text(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."
