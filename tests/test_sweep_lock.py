"""One driver per sweep folder: the lock refuses only when another driver holds it (not on a file system without
flock, where the sweep goes on after one dim line), and a second driver is refused by name in its checks, before
any data, MLflow store or Ray; the folder's Parquet writes are atomic."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import run_cli
from trainables.errors import UserError
from tuner import folder as folder_module
from tuner.folder import LOCK_FILE, SweepFolder, SweepRecord
from tuner.run import EXIT_USER_ERROR
from tuner.spec import build_spec

SMALL = ["--space", "resnet_rsb", "--dataset", "digits", "--set", "model=cnn_basic", "--set", "width=0.25"]


@pytest.fixture
def folder(tmp_path):
    found = SweepFolder(tmp_path / "sweeps" / "s")
    yield found
    found.unlock()


def held_elsewhere(folder: SweepFolder, pid: int = 4242) -> object:
    """The folder's lock held by another open file (as another process's driver holds it), naming `pid`."""
    folder.path.mkdir(parents=True, exist_ok=True)
    handle = open(folder.file(LOCK_FILE), "a+")
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    handle.write(json.dumps({"host": "node7", "pid": pid, "since": "2026-01-02 03:04:05"}))
    handle.flush()
    return handle


def flock_failing(monkeypatch, code: int) -> None:
    def flock(handle, operation):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(fcntl, "flock", flock)


# --- file systems without flock ----------------------------------------------------------------------------------

@pytest.mark.parametrize("code", [errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS])
def test_no_flock_on_the_file_system_goes_on_unlocked_with_one_dim_line(monkeypatch, capsys, tmp_path, code):
    monkeypatch.setattr(folder_module, "_WARNED_UNLOCKED", set())
    flock_failing(monkeypatch, code)
    first, second = SweepFolder(tmp_path / "a"), SweepFolder(tmp_path / "b")
    try:
        first.lock()
        second.lock()  # the same file system: said once
        first.check_unlocked()  # a probe learns nothing either: no refusal
    finally:
        first.unlock()
        second.unlock()
    out = capsys.readouterr().out
    assert out.count("cannot be locked on this file system") == 1, out
    assert "another driver" not in out and len(out.strip().splitlines()) == 1
    assert json.loads(first.file(LOCK_FILE).read_text())["pid"] == os.getpid()


def test_another_flock_error_is_not_blamed_on_another_driver(monkeypatch, folder):
    flock_failing(monkeypatch, errno.EIO)
    with pytest.raises(UserError) as caught:
        folder.lock()
    assert "cannot lock sweep folder" in str(caught.value) and "another driver" not in str(caught.value)


def test_a_held_lock_refuses_naming_the_holder(folder):
    handle = held_elsewhere(folder)
    try:
        with pytest.raises(UserError) as caught:
            folder.lock()
        with pytest.raises(UserError) as probed:
            folder.check_unlocked()
    finally:
        handle.close()
    expected = ("sweep 's' is being run by another driver (pid 4242 on node7 since 2026-01-02 03:04:05); wait for "
                "it to end, or stop it (Ctrl-C, or kill -INT 4242) and --resume")
    assert str(caught.value) == expected == str(probed.value)
    folder.lock()  # the holder gone (its file closed, as when it dies), the lock is taken at once


def test_the_probe_writes_nothing_and_lets_go_at_once(folder):
    folder.check_unlocked()
    assert not folder.path.exists()  # no folder made by a check
    folder.lock()
    folder.check_unlocked()  # this process's own lock is no other driver
    folder.unlock()
    folder.check_unlocked()
    handle = held_elsewhere(folder)  # the probe left no lock behind: another driver takes it at once
    handle.close()


# --- a second driver, refused in its checks ------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["new", "new-before-its-record", "resume"])
def test_a_second_driver_is_refused_by_name_before_data_mlflow_or_ray(tmp_path, how):
    storage = tmp_path / "sweeps"
    held = SweepFolder(storage / "busy")
    if how != "new-before-its-record":
        spec = build_spec(space="resnet_rsb", dataset="digits", sets=["model=cnn_basic", "width=0.25"],
                          storage=str(storage), name="busy")
        held.write_record(SweepRecord(spec))
    held.lock()  # as the running driver holds it
    try:
        extra = ["--resume"] if how == "resume" else ["--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
        t0 = time.monotonic()
        proc = run_cli(*SMALL, "--name", "busy", "--storage", str(storage), *extra, cwd=tmp_path,
                       env={"RAY_ADDRESS": "127.0.0.1:1"}, timeout=120)  # were Ray reached, it would fail otherwise
    finally:
        held.unlock()
    line = proc.stdout.strip()
    assert proc.returncode == EXIT_USER_ERROR, proc.stdout + proc.stderr
    assert len(line.splitlines()) == 1 and "Traceback" not in proc.stdout + proc.stderr, line
    assert line.startswith("error: sweep 'busy' is being run by another driver") and f"(pid {os.getpid()} on " in line
    assert f"kill -INT {os.getpid()}) and --resume" in line, line
    assert not (tmp_path / "mlflow.db").exists()  # refused before MLflow (and so before the data and Ray)
    print(f"\nrefused in {time.monotonic() - t0:.1f} s")


# --- atomic tables -------------------------------------------------------------------------------------------------

def test_write_table_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "front.parquet"
    folder_module.write_table(path, pa.table({"x": [1, 2]}))
    assert pq.read_table(path).column("x").to_pylist() == [1, 2]

    def torn(table, where):  # half a file, then the writer dies
        open(where, "wb").write(b"PAR1 half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pq, "write_table", torn)
    with pytest.raises(OSError):
        folder_module.write_table(path, pa.table({"x": [3]}))
    assert pq.read_table(path).column("x").to_pylist() == [1, 2]  # the old table, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["front.parquet"]  # no temporary file left


def test_a_trial_row_without_a_run_gets_one_ended_as_the_row_says(tmp_path):
    """A budget that ends the sweep as a trial starts can leave that trial a row but no run (its start never
    reached the callback): MLflow then holds one run per row, ended as the row says."""
    import mlflow

    from tuner import tracking

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    experiment_id = client.create_experiment("reconcile")
    parent = client.create_run(experiment_id).info.run_id
    known = tracking.ensure_trial_run(client, experiment_id, parent, "aaaa1111", {"lr": 0.01})
    rows = [{"trial_id": "aaaa1111", "status": "finished", "epochs": 2, "node_id": "n", "error": None},
            {"trial_id": "bbbb2222", "status": "stopped", "epochs": 1, "node_id": "n", "error": None, "lr": 0.1}]
    assert tracking.reconcile_runs(client, parent, rows) == 2
    runs = {r.data.tags["trial_id"]: r for r in tracking.child_runs(client, parent)}
    assert set(runs) == {"aaaa1111", "bbbb2222"} and runs["aaaa1111"].info.run_id == known
    assert runs["bbbb2222"].data.tags["outcome"] == "stopped" and runs["bbbb2222"].info.status == "FINISHED"
    assert runs["bbbb2222"].data.params["lr"] == "0.1"
    assert tracking.reconcile_runs(client, parent, rows) == 0  # nothing left to mend
