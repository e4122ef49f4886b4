"""The sweep folder as a durable record: one driver at a time, portable when copied or moved, consistent with
MLflow after a crash and --resume, fast when MLflow is down, and names that stay inside --storage."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO, free_port, run_cli
from tests.test_resilience import start_cli, wait_for_lines
from tuner.run import EXIT_USER_ERROR, main

SMALL = ["--space", "resnet_rsb", "--dataset", "digits", "--set", "model=cnn_basic", "--set", "width=0.25"]


def sweep(tmp_path, name, *extra, samples=2, epochs=1, storage=None):
    return [*SMALL, "--num-samples", str(samples), "--max-epochs", str(epochs), "--name", name,
            "--storage", str(storage or tmp_path / "sweeps"), "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
            *extra]


def client_of(tmp_path):
    import mlflow

    return mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")


def children(client, parent_id):
    parent = client.get_run(parent_id)
    return client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")


def record(folder):
    return json.loads((folder / "sweep.json").read_text())


# --- names, stores, unreachable servers: one line, nothing written -----------------------------------------------

@pytest.mark.parametrize("name", ["../outside", "/tmp/absolute", "a/b", ".hidden", "x" * 200, "tab\tname"])
def test_a_name_is_one_folder_inside_storage(capsys, tmp_path, name):
    code = main([*SMALL, "--storage", str(tmp_path / "sweeps"), "--name", name,
                 "--mlflow-uri", f"sqlite:///{tmp_path / 'm.db'}"])
    text = capsys.readouterr().out.strip()
    assert code == EXIT_USER_ERROR and text.startswith("error: --name") and len(text.splitlines()) == 1, text
    assert "a sweep name is one folder name inside --storage" in text
    assert not (tmp_path / "sweeps").exists() and not (tmp_path / "outside").exists()


@pytest.mark.parametrize("kind", ["not-a-database", "read-only"])
def test_a_bad_sqlite_store_is_one_line(capsys, tmp_path, kind):
    if kind == "read-only" and os.geteuid() == 0:
        pytest.skip("runs as root, where a read-only file is still writable")
    store = tmp_path / "store.db"
    if kind == "not-a-database":
        store.write_bytes(os.urandom(4096))
        needle = "is not an SQLite database"
    else:
        sqlite3.connect(store).execute("create table t (x int)").connection.close()
        store.chmod(0o444)
        (tmp_path).chmod(0o555)
        needle = "is read-only"
    try:
        code = main([*SMALL, "--num-samples", "1", "--max-epochs", "1", "--storage", str(tmp_path / "sweeps"),
                     "--mlflow-uri", f"sqlite:///{store}"])
    finally:
        tmp_path.chmod(0o755)
    text = capsys.readouterr().out.strip()
    assert code == EXIT_USER_ERROR and needle in text and len(text.splitlines()) == 1, text
    assert "Traceback" not in text and not (tmp_path / "sweeps").exists()


@pytest.mark.slow
def test_an_unreachable_tracking_server_is_one_line_within_seconds(capsys, tmp_path):
    t0 = time.monotonic()
    code = main([*SMALL, "--storage", str(tmp_path / "sweeps"), "--mlflow-uri", f"http://127.0.0.1:{free_port()}"])
    took = time.monotonic() - t0
    text = capsys.readouterr().out.strip()
    print(f"\nunreachable MLflow refused after {took:.1f} s")
    assert code == EXIT_USER_ERROR and "cannot be reached" in text and took < 20, (took, text)
    assert not (tmp_path / "sweeps").exists()


# --- exclusive ---------------------------------------------------------------------------------------------------

@pytest.mark.integration  # in CI: the two drivers racing on one name
def test_one_driver_per_sweep_folder_new_and_resumed(tmp_path):
    """A second driver on a running sweep is refused with one line naming the first; the first loses nothing.
    Then, interrupted, two --resume race: one continues, the other is refused; the winner is registered once."""
    first = start_cli(*sweep(tmp_path, "race", samples=4, epochs=2), cwd=tmp_path)
    wait_for_lines(first, "Ray dashboard", 1)
    second = run_cli(*sweep(tmp_path, "race", samples=4, epochs=2), cwd=tmp_path, timeout=300)
    assert second.returncode == EXIT_USER_ERROR, second.stdout
    line = second.stdout.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in second.stdout + second.stderr
    assert (f"is being run by another driver (pid {first.pid}" in line or "already exists" in line), line
    wait_for_lines(first, " after epoch ", 1)
    os.kill(first.pid, signal.SIGINT)
    first.communicate(timeout=300)
    assert first.returncode == 130
    folder = tmp_path / "sweeps" / "race"
    assert record(folder)["state"] == "interrupted"

    resumes = [start_cli(*SMALL, "--resume", "--name", "race", "--storage", str(tmp_path / "sweeps"), cwd=tmp_path)
               for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in resumes]
    codes = sorted(p.returncode for p in resumes)
    assert codes == [0, EXIT_USER_ERROR], outs
    refused = outs[[p.returncode for p in resumes].index(EXIT_USER_ERROR)]
    assert "is being run by another driver" in refused or "completed meanwhile" in refused, refused
    assert record(folder)["state"] == "complete"
    rows = pq.read_table(folder / "trials.parquet").to_pylist()
    assert len(rows) == 4 == len({r["trial_id"] for r in rows})
    client = client_of(tmp_path)
    parents = client.search_runs([client.get_experiment_by_name("resnet_rsb").experiment_id],
                                 "tags.`sweep.role` = 'parent'")
    assert len(parents) == 1 and len(children(client, parents[0].info.run_id)) == 4
    assert len(client.search_model_versions("name='resnet_rsb-digits'")) == 1


# --- portable ----------------------------------------------------------------------------------------------------

@pytest.mark.integration
@pytest.mark.slow
def test_a_copied_then_moved_folder_grows_and_exports_where_it_lands(tmp_path):
    base = run_cli(*sweep(tmp_path, "base"), cwd=tmp_path, timeout=600)
    assert base.returncode == 0, base.stdout[-2000:]
    storage = tmp_path / "sweeps"
    shutil.copytree(storage / "base", storage / "copy")
    grown = run_cli(*SMALL, "--add-trials", "1", "--name", "copy", "--storage", str(storage), cwd=tmp_path,
                    timeout=600)
    assert grown.returncode == 0, grown.stdout[-2000:]
    assert len(pq.read_table(storage / "base" / "trials.parquet")) == 2  # the original is untouched
    assert len(pq.read_table(storage / "copy" / "trials.parquet")) == 3
    client = client_of(tmp_path)
    base_parent, copy_parent = record(storage / "base")["parent_run_id"], record(storage / "copy")["parent_run_id"]
    assert base_parent != copy_parent  # a copy has its own parent run in MLflow
    assert len(children(client, base_parent)) == 2 and len(children(client, copy_parent)) == 3

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.move(str(storage / "copy"), str(elsewhere / "moved"))
    exported = subprocess.run([sys.executable, "-m", "tuner.export", str(elsewhere / "moved"), "--no-mlflow",
                               "--iterations", "3", "--budget", "0.2"], cwd=tmp_path, capture_output=True, text=True,
                              timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert exported.returncode == 0, exported.stdout[-2000:] + exported.stderr[-2000:]
    assert (elsewhere / "moved" / "export" / "model.onnx").is_file()
    again = run_cli(*SMALL, "--add-trials", "1", "--name", "moved", "--storage", str(elsewhere), cwd=tmp_path,
                    timeout=600)
    assert again.returncode == 0, again.stdout[-2000:]
    moved = record(elsewhere / "moved")
    assert moved["parent_run_id"] == copy_parent  # moved, not copied: the same parent run follows it
    assert client.get_run(copy_parent).data.tags["sweep_dir"] == str((elsewhere / "moved").resolve())
    assert len(children(client, copy_parent)) == 4 == len(pq.read_table(elsewhere / "moved" / "trials.parquet"))


# --- consistent after a full disk and --resume ---------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("needs to mount a small tmpfs (root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.mark.integration
@pytest.mark.slow  # a minute; make test-all runs it
def test_a_full_disk_is_one_line_and_resume_finishes_consistent_with_mlflow(tmp_path, small_disk):
    ballast = small_disk / "ballast"
    free = shutil.disk_usage(small_disk).free
    with open(ballast, "wb") as f:  # leave room for the record and Ray's state, not for the checkpoints
        f.write(b"\0" * (free - 700_000))
    proc = run_cli(*sweep(tmp_path, "full", samples=3, epochs=2, storage=small_disk / "sweeps"), cwd=tmp_path,
                   timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in out, out[-3000:]
    assert "error: the disk is full" in out or "trial(s) failed" in out, out[-3000:]
    print("\n" + "\n".join(line for line in out.splitlines() if "│" not in line and "━" not in line)[-1500:])
    ballast.unlink()  # space freed
    resumed = run_cli(*SMALL, "--resume", "--name", "full", "--storage", str(small_disk / "sweeps"), cwd=tmp_path,
                      timeout=600)
    if "Ray's saved search state" in resumed.stdout:  # the disk filled before Ray saved its searcher once
        assert resumed.returncode == EXIT_USER_ERROR and "Traceback" not in resumed.stdout + resumed.stderr
        assert resumed.stdout.strip().splitlines()[-1].startswith("error: --resume: Ray's saved search state")
        return
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    folder = small_disk / "sweeps" / "full"
    rows = pq.read_table(folder / "trials.parquet").to_pylist()
    assert len(rows) == 3 and all(r["status"] in ("finished", "stopped") for r in rows), rows
    client = client_of(tmp_path)
    runs = {r.data.tags["trial_id"]: r for r in children(client, record(folder)["parent_run_id"])}
    assert sorted(runs) == sorted(r["trial_id"] for r in rows)
    for row in rows:  # each run ends as its row says, whatever it went through
        assert runs[row["trial_id"]].data.tags["outcome"] == row["status"]
        assert runs[row["trial_id"]].info.status == "FINISHED"


def test_two_drivers_creating_one_sqlite_store_at_once_both_go_on(tmp_path):
    """MLflow creates a new SQLite store's tables on first contact; two drivers doing it at the same moment used
    to end one of them in a "table already exists" traceback."""
    store = f"sqlite:///{tmp_path / 'fresh.db'}"
    code = ("import sys; from tuner.tracking import connect; connect(sys.argv[1]); print('connected')")
    for attempt in range(3):  # each time a fresh store, both at once
        (tmp_path / "fresh.db").unlink(missing_ok=True)
        procs = [subprocess.Popen([sys.executable, "-c", code, store], cwd=REPO, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for _ in range(2)]
        outs = [p.communicate(timeout=120)[0] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outs
        assert all(out.strip().endswith("connected") and "Traceback" not in out for out in outs), outs


# --- MLflow first, and no parent run left RUNNING ---------------------------------------------------------------

def small_spec(tmp_path, uri=None, name="early"):
    from tuner.spec import build_spec

    return build_spec(space="resnet_rsb", dataset="digits", sets=["model=cnn_basic", "width=0.25"],
                      storage=str(tmp_path / "sweeps"), name=name,
                      mlflow_uri=uri or f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_mlflow_is_reached_before_the_data_is_prepared(tmp_path, monkeypatch):
    """A bad store is said before a data set is downloaded or decoded (the real steps, watched in order)."""
    from trainables.errors import UserError
    from tuner import sweep, tracking

    store = tmp_path / "store.db"
    store.write_bytes(os.urandom(4096))
    steps = []
    real_data, real_connect = sweep.prepare_data, tracking.connect
    monkeypatch.setattr(sweep, "prepare_data", lambda spec: steps.append("data") or real_data(spec))
    monkeypatch.setattr(tracking, "connect", lambda uri: steps.append("mlflow") or real_connect(uri))
    with pytest.raises(UserError, match="is not an SQLite database"):
        sweep.run_sweep(small_spec(tmp_path, f"sqlite:///{store}"))
    assert steps == ["mlflow"]


def open_and_fail(tmp_path, monkeypatch, exc: BaseException, where: str):
    """open_tracking of a new sweep against a real SQLite MLflow, `exc` raised at `where`: (record, parent run)."""
    from tuner import sweep, tracking

    spec = small_spec(tmp_path)
    client = tracking.connect(spec.mlflow_uri)
    plan = sweep.check(spec, resume=False, add_trials=0)

    def fail(*args, **kwargs):
        raise exc

    if where == "tracker":  # after the parent run's id is in the record
        monkeypatch.setattr(tracking, "MlflowTrials", fail)
    else:  # inside the parent run's making: created, its id not yet known
        monkeypatch.setattr(client, "log_batch", fail)
    with pytest.raises(type(exc)):
        sweep.open_tracking(plan, client, {})
    saved = record(plan.folder.path)
    return saved, client_of(tmp_path).get_run(saved["parent_run_id"])


@pytest.mark.parametrize("where", ["tracker", "parent"])
def test_an_error_while_opening_tracking_fails_the_parent_run(tmp_path, monkeypatch, where):
    saved, parent = open_and_fail(tmp_path, monkeypatch, RuntimeError("boom"), where)
    assert saved["state"] == "interrupted" and saved["stopped_by"] == "RuntimeError: boom"
    assert parent.info.status == "FAILED" and parent.data.tags["sweep.state"] == "interrupted"


@pytest.mark.parametrize("where", ["tracker", "parent"])
def test_a_stop_while_opening_tracking_kills_the_parent_run(tmp_path, monkeypatch, where):
    from tuner.cli import Interrupted

    saved, parent = open_and_fail(tmp_path, monkeypatch, Interrupted(signal.SIGTERM), where)
    assert saved["state"] == "interrupted" and saved["stopped_by"] == "SIGTERM"
    assert parent.info.status == "KILLED" and parent.data.tags["end_reason"] == "SIGTERM"


def test_a_stop_before_a_grown_sweep_reopens_leaves_it_complete(tmp_path, monkeypatch):
    """--add-trials stopped before its round is recorded: the finished sweep and its parent run stay as they were."""
    from tuner import sweep, tracking
    from tuner.cli import Interrupted
    from tuner.folder import SweepFolder, SweepRecord, SweepState

    spec = small_spec(tmp_path)
    client = tracking.connect(spec.mlflow_uri)
    parent = tracking.start_parent_run(client, "resnet_rsb", "early", {}, {})
    tracking.end_parent_run(spec.mlflow_uri, parent, "FINISHED", state="complete")
    folder = SweepFolder(spec.sweep_dir)
    folder.write_record(SweepRecord(spec, parent_run_id=parent, state=SweepState.COMPLETE))
    plan = sweep.check(spec, resume=False, add_trials=2)

    def stop(*args):
        raise Interrupted(signal.SIGINT)

    monkeypatch.setattr(client, "get_run", stop)  # the first thing a grown sweep asks MLflow
    with pytest.raises(Interrupted):
        sweep.open_tracking(plan, client, {})
    assert record(folder.path)["state"] == "complete" and record(folder.path)["stopped_by"] is None
    assert client_of(tmp_path).get_run(parent).info.status == "FINISHED"
