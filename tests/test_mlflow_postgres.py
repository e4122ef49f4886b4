"""MLflow on PostgreSQL, as in docker/compose.yaml: a real PostgreSQL on 127.0.0.1 (Debian's postgresql package),
a real `mlflow server` on it, a real sweep, the registered winner loaded back and predicting.

PostgreSQL is the store to use when many trials log at once (SQLite takes one writer at a time and answers
"database is locked" under load). The server runs as the `postgres` user when the test runs as root (PostgreSQL
refuses root), on a free port, in a folder of its own under /tmp, and is stopped (fast shutdown) at the end.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tuner.folder import SweepFolder
from tests.conftest import free_port, run_cli, wait_http

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SMALL = ["--space", "resnet_rsb", "--dataset", "digits", "--set", "model=cnn_basic", "--set", "width=0.25"]


def postgres_bindir() -> Path | None:
    """Debian installs the server binaries under /usr/lib/postgresql/<major>/bin, outside PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("postgres")
    return Path(on_path).parent if on_path else None


def ensure_postgres() -> Path:
    """The PostgreSQL server binaries: there, or installed from Debian's package (as root), or a visible skip."""
    bindir = postgres_bindir()
    if bindir is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "update", "-qq"],
                    ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "postgresql"]):
            subprocess.run(cmd, env=env, capture_output=True, timeout=600)
        bindir = postgres_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not found and not installable here "
                    "(install Debian's `postgresql` package)")
    return bindir


class Postgres:
    """A throwaway PostgreSQL cluster: initdb with a password (scram-sha-256), TCP on 127.0.0.1 only."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = free_port()
        self.user, self.password, self.db = "mlflow", secrets.token_hex(12), "mlflow"
        self.root = Path(tempfile.mkdtemp(prefix="pg-", dir="/tmp"))  # not pytest's tmp: root-only (0700)
        self.run_as: list[str] = []
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                pytest.skip("running as root and there is no `postgres` user to run PostgreSQL as")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self.run_as = ["runuser", "-u", "postgres", "--"]
            self.owner = owner
        self.proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        # the driver named: SQLAlchemy 2.0 would pick psycopg2 for a bare postgresql://, 2.1 psycopg (3)
        return f"postgresql+psycopg://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.db}"

    def _own(self, path: Path) -> None:
        if self.run_as:
            os.chown(path, self.owner.pw_uid, self.owner.pw_gid)

    def start(self) -> "Postgres":
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        self._own(pwfile)
        data = self.root / "data"
        subprocess.run([*self.run_as, str(self.bindir / "initdb"), "-D", str(data), "-U", self.user,
                        f"--pwfile={pwfile}", "--auth=scram-sha-256", "-E", "UTF8", "--no-sync"],
                       check=True, capture_output=True, timeout=120, cwd=self.root)
        log = open(self.root / "postgres.log", "ab")
        self.proc = subprocess.Popen(
            [*self.run_as, str(self.bindir / "postgres"), "-D", str(data), "-p", str(self.port),
             "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=", "-c", "fsync=off",
             "-c", "max_connections=60"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.root)
        import psycopg

        deadline = time.monotonic() + 60
        while True:
            try:
                conn = psycopg.connect(host="127.0.0.1", port=self.port, user=self.user, password=self.password,
                                       dbname="postgres", connect_timeout=2, autocommit=True)
                break
            except psycopg.OperationalError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("PostgreSQL did not start:\n" + (self.root / "postgres.log").read_text())
                time.sleep(0.3)
        with conn:
            conn.execute(f"CREATE DATABASE {self.db}")
        return self

    def query(self, sql: str) -> list[tuple]:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user=self.user, password=self.password,
                             dbname=self.db) as conn:
            return conn.execute(sql).fetchall()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)  # "fast" shutdown: ends sessions, checkpoints, exits
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)


class PostgresMlflowServer:
    """`mlflow server` with its runs and model registry in PostgreSQL and proxied artifacts in a folder."""

    def __init__(self, backend_uri: str, artifacts: Path) -> None:
        self.backend_uri, self.artifacts = backend_uri, artifacts
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "PostgresMlflowServer":
        log = open(self.artifacts.parent / "mlflow-server.log", "ab")
        env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": self.backend_uri}  # not on the command line
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--artifacts-destination", str(self.artifacts), "--workers", "2"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_http(f"{self.uri}/health", timeout=120, proc=self.proc)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{exc}:\n{(self.artifacts.parent / 'mlflow-server.log').read_text()[-3000:]}") from None
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture(scope="module")
def postgres():
    pytest.importorskip("psycopg", reason="MLflow needs a PostgreSQL driver: pip install 'psycopg[binary]'")
    server = Postgres(ensure_postgres())
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def mlflow_on_postgres(postgres, tmp_path_factory):
    server = PostgresMlflowServer(postgres.uri, tmp_path_factory.mktemp("mlflow-pg") / "artifacts")
    try:
        yield server.start()
    finally:
        server.stop()


def test_sweep_tracked_in_mlflow_on_postgres(tmp_path, postgres, mlflow_on_postgres):
    import mlflow
    import torch

    t0 = time.monotonic()
    proc = run_cli(*SMALL, "--num-samples", "2", "--max-epochs", "2", "--max-concurrent", "2",
                   "--storage", str(tmp_path / "sweeps"), "--name", "pg", "--mlflow-uri", mlflow_on_postgres.uri,
                   cwd=tmp_path, timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    print(f"\nsweep with MLflow on PostgreSQL: {time.monotonic() - t0:.1f} s")
    rows = SweepFolder(tmp_path / "sweeps" / "pg").read_trials()  # checkpoints resolved where the folder is
    assert len(rows) == 2

    client = mlflow.MlflowClient(mlflow_on_postgres.uri)
    experiment = client.get_experiment_by_name("resnet_rsb")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("sweep.role") == "parent")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FINISHED" and "test_top1" in parent.data.metrics
    assert {r.data.tags["trial_id"] for r in children} == {r["trial_id"] for r in rows}
    for run in children:
        epochs = next(r["epochs"] for r in rows if r["trial_id"] == run.data.tags["trial_id"])
        assert len(client.get_metric_history(run.info.run_id, "val_top1")) == epochs

    # It is PostgreSQL that holds them, not a file next to the server.
    assert postgres.query("SELECT count(*) FROM runs")[0][0] == len(runs) == 3
    assert postgres.query("SELECT name FROM registered_models") == [("resnet_rsb-digits",)]
    assert postgres.query("SELECT count(*) FROM metrics WHERE key = 'val_top1'")[0][0] == \
        sum(r["epochs"] for r in rows)

    # The registered winner: its artifact comes back through the server, loads, and predicts as its checkpoint.
    versions = client.search_model_versions("name='resnet_rsb-digits'")
    assert len(versions) == 1
    mlflow.set_tracking_uri(mlflow_on_postgres.uri)
    model = mlflow.pytorch.load_model("models:/resnet_rsb-digits/1")
    from trainables.classify import load_checkpoint_model
    from trainables.data import load_dataset

    winner = max(rows, key=lambda r: r["best_val_top1"])
    assert parent.data.tags["winner_trial_id"] == winner["trial_id"]
    reference, _ = load_checkpoint_model(winner["checkpoint"])
    digits = load_dataset("digits")
    images = torch.from_numpy(digits.val_x[:32].astype(np.float32) / 255)
    with torch.no_grad():
        predicted = model(images).argmax(1)
        assert torch.equal(predicted, reference(images).argmax(1))
    assert (predicted.numpy() == digits.val_y[:32]).mean() > 0.1  # better than nothing: it learned something


def test_concurrent_writers_do_not_lock(mlflow_on_postgres):
    """Eight trials' worth of writers at once, as a busy sweep: every write lands (SQLite would lock)."""
    import mlflow

    client = mlflow.MlflowClient(mlflow_on_postgres.uri)
    experiment_id = client.create_experiment(f"concurrency-{secrets.token_hex(4)}")
    errors: list[BaseException] = []

    def writer(i: int) -> None:
        try:
            run = client.create_run(experiment_id, run_name=f"writer-{i}")
            for step in range(15):
                client.log_metric(run.info.run_id, "loss", 1.0 / (step + 1), step=step)
            client.set_terminated(run.info.run_id)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    runs = client.search_runs([experiment_id])
    assert len(runs) == 8
    assert all(len(client.get_metric_history(r.info.run_id, "loss")) == 15 for r in runs)
