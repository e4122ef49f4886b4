"""Stopping a sweep on purpose, through a real driver, a real local Ray instance and real signals: SIGINT once
(during a trial), twice (at once), SIGTERM (as a trial ends), SIGINT during the final test pass; each then
--resume, which ends with every trial exactly once. Time budgets and targets end a sweep as complete."""

from __future__ import annotations

import json
import os
import signal
import time

import pyarrow.parquet as pq
import pytest

from tests.conftest import run_cli
from tests.test_resilience import start_cli, wait_for_lines
from tuner import stopping
from tuner.spec import build_spec

SMALL = ["--space", "resnet_rsb", "--dataset", "digits", "--set", "model=cnn_basic", "--set", "width=0.25"]


def sweep_args(tmp_path, name, samples=6, epochs=3):
    return [*SMALL, "--num-samples", str(samples), "--max-epochs", str(epochs), "--name", name,
            "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]


def record(tmp_path, name):
    return json.loads((tmp_path / "sweeps" / name / "sweep.json").read_text())


def rows(tmp_path, name):
    path = tmp_path / "sweeps" / name / "trials.parquet"
    return pq.read_table(path).to_pylist() if path.exists() else []


def mlflow_state(tmp_path, name):
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = client.get_run(record(tmp_path, name)["parent_run_id"])
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    versions = client.search_model_versions("name='resnet_rsb-digits'")
    return parent, children, versions


def interrupt(tmp_path, name, signum, *, after, count=1, samples=6, again=False, delay=0.0):
    """Start a sweep, wait for `count` lines holding `after` (and `delay` seconds), send `signum` (twice with
    `again`); the driver's exit code and output."""
    proc = start_cli(*sweep_args(tmp_path, name, samples), cwd=tmp_path)
    lines = wait_for_lines(proc, after, count)
    time.sleep(delay)
    os.kill(proc.pid, signum)
    if again:
        time.sleep(0.3)
        os.kill(proc.pid, signum)
    out, _ = proc.communicate(timeout=180)
    return proc.returncode, "".join(lines) + out


def check_interrupted(tmp_path, name, code, out, signum):
    assert code == 128 + signum, out
    assert "Traceback" not in out and "Stop signal received" not in out, out
    rec = record(tmp_path, name)
    assert rec["state"] == "interrupted" and not rec["completed"] and rec["winner"] is None, rec
    assert f"--resume --name {name}" in out and f"interrupted by {signal.Signals(signum).name}" in out
    parent, children, versions = mlflow_state(tmp_path, name)
    assert parent.info.status == "KILLED" and not [r for r in children if r.info.status == "RUNNING"]
    table = rows(tmp_path, name)
    by_id = {r["trial_id"]: r for r in table}
    assert {r.data.tags["trial_id"] for r in children} <= set(by_id)  # no run for a trial that never started
    for run in children:
        if by_id[run.data.tags["trial_id"]]["status"] == "interrupted":
            assert run.info.status == "KILLED" and run.data.tags["outcome"] == "interrupted"
    return table


def check_resumed(tmp_path, name, samples=6):
    resumed = run_cli(*SMALL, "--resume", "--name", name, cwd=tmp_path, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    rec = record(tmp_path, name)
    assert rec["state"] == "complete" and rec["winner"]
    table = rows(tmp_path, name)
    assert len(table) == samples == len({r["trial_id"] for r in table})  # every trial asked for, once
    assert all(r["status"] in ("finished", "stopped") for r in table)
    parent, children, versions = mlflow_state(tmp_path, name)
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep.state"] == "complete"
    assert sorted(r.data.tags["trial_id"] for r in children) == sorted(r["trial_id"] for r in table)
    assert {r.data.tags["trial_id"]: (r.info.status, r.data.tags["outcome"]) for r in children} == \
        {r["trial_id"]: ("FINISHED", r["status"]) for r in table}  # a trial ASHA stopped is no failure
    assert len(versions) == 1  # tested and registered once
    return table


# --- pure parts -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,seconds", [("90m", 5400), ("2h", 7200), ("1h30m", 5400), ("45s", 45),
                                          ("3600", 3600), ("1.5h", 5400)])
def test_durations(text, seconds):
    assert stopping.parse_duration(text) == seconds


@pytest.mark.parametrize("kwargs,needle", [
    ({"time_budget": "soon"}, "--time-budget 'soon': give a duration such as 90m"),
    ({"time_budget": "0m"}, "the budget must be longer than zero"),
    ({"stop_at": "val_top1"}, "write METRIC=VALUE"),
    ({"stop_at": "accuracy=90"}, "unknown metric 'accuracy'; choose one of: val_top1"),
    ({"stop_at": "val_top1=high"}, "'high' is not a number"),
    ({"seed": 2 ** 40}, "--seed must lie in [0, 2147483647]"),
])
def test_bad_budgets_and_targets_are_one_line(kwargs, needle):
    from trainables.errors import UserError

    with pytest.raises(UserError) as info:
        build_spec(space="resnet_rsb", dataset="digits", storage="/tmp/unused", **kwargs)
    assert needle in str(info.value)


def test_targets_know_their_direction():
    from tuner.spec import parse_target

    assert parse_target("val_top1=95").reached(95.0) and not parse_target("val_top1=95").reached(94.9)
    assert parse_target("val_loss=0.3").reached(0.29) and not parse_target("val_loss=0.3").reached(0.31)
    assert not parse_target("val_top1=95").reached(float("nan"))


def test_the_stopper_saves_the_elapsed_time_now_and_then():
    saved = []
    stopper = stopping.SweepStopper(None, None, save=saved.append, save_every_s=0.2)
    assert stopper.stop_all() is False and saved == []  # not yet
    time.sleep(0.25)
    stopper.stop_all()
    stopper.stop_all()  # once per interval, however often Tune asks
    assert len(saved) == 1 and 0.2 <= saved[0] <= stopper.elapsed_s()


def test_a_failed_save_of_the_elapsed_time_is_a_warning(caplog):
    def full(seconds):
        raise OSError(28, "No space left on device")

    stopper = stopping.SweepStopper(None, None, save=full, save_every_s=0.0)
    assert stopper.stop_all() is False
    assert "could not save the sweep's elapsed time (No space left on device)" in caplog.text


@pytest.mark.parametrize("grown", [False, True])
def test_a_killed_runs_time_counts_against_the_budget_up_to_the_last_save(tmp_path, grown):
    """The driver saves as it goes and is then killed (never reaching the end-of-run save): sweep.json has the
    time run so far, over what earlier runs had spent; the driver's own record gets it once, at the end."""
    from tuner.folder import SweepFolder, SweepRecord
    from tuner.sweep import Plan, elapsed_saver

    spec = build_spec(space="resnet_rsb", dataset="digits", storage=str(tmp_path / "sweeps"), name="budget",
                      time_budget="10m")
    folder = SweepFolder(spec.sweep_dir)
    rounds = [{"dir": "more-1", "num_samples": 2, "elapsed_s": 30.0}] if grown else []
    live = SweepRecord(spec, elapsed_s=100.0, rounds=rounds)
    folder.write_record(live)
    plan = Plan(spec, folder, live, round_index=1 if grown else 0, add_trials=2 if grown else 0)
    stopper = stopping.SweepStopper(spec.time_budget_s, None, save=elapsed_saver(plan, live), save_every_s=0.0)
    time.sleep(0.05)
    stopper.stop_all()  # ... then kill -9
    on_disk = folder.read_record()
    spent = on_disk.rounds[0]["elapsed_s"] - 30.0 if grown else on_disk.elapsed_s - 100.0
    assert 0.05 <= spent <= stopper.elapsed_s()
    assert (on_disk.elapsed_s == 100.0) if grown else (on_disk.rounds == [])
    assert live.elapsed_s == 100.0 and live.rounds == rounds and (not grown or rounds[0]["elapsed_s"] == 30.0)


# --- real signals -----------------------------------------------------------------------------------------------

@pytest.mark.integration
def test_sigint_during_a_trial_then_resume(tmp_path):
    # a trial has ended, the next ones train: the signal lands mid-trial
    code, out = interrupt(tmp_path, "int", signal.SIGINT, after=" after epoch ")
    table = check_interrupted(tmp_path, "int", code, out, signal.SIGINT)
    assert any(r["status"] == "interrupted" for r in table), table
    check_resumed(tmp_path, "int")


@pytest.mark.integration
def test_sigterm_as_the_first_trials_start_then_resume(tmp_path):
    code, out = interrupt(tmp_path, "term", signal.SIGTERM, after="Ray dashboard", delay=4)
    table = check_interrupted(tmp_path, "term", code, out, signal.SIGTERM)
    assert len(table) < 6  # trials that had not started are no rows
    check_resumed(tmp_path, "term")


@pytest.mark.integration
def test_second_sigint_stops_at_once_then_resume(tmp_path):
    t0 = time.monotonic()
    code, out = interrupt(tmp_path, "twice", signal.SIGINT, after=" after epoch ", again=True)
    assert code == 130 and time.monotonic() - t0 < 120, out
    assert "Traceback" not in out and "stopped at once by a second SIGINT; continue with: " in out
    assert record(tmp_path, "twice")["state"] in ("interrupted", "running")  # as after kill -9: Ray's state resumes
    check_resumed(tmp_path, "twice")


@pytest.mark.slow  # minutes: make test-all runs it; a stop during training is tested in CI
@pytest.mark.integration
def test_sigint_during_the_final_test_pass_then_resume(tmp_path):
    code, out = interrupt(tmp_path, "final", signal.SIGINT, after="testing each model's pick", samples=2)
    assert code == 130, out
    rec = record(tmp_path, "final")
    assert rec["state"] == "interrupted" and rec["winner"] is None
    assert len(rows(tmp_path, "final")) == 2  # every trial had ended: the resume only tests and registers
    check_resumed(tmp_path, "final", samples=2)


# --- the sweep's own ends -----------------------------------------------------------------------------------------

@pytest.mark.integration
def test_time_budget_ends_the_sweep_as_complete(tmp_path):
    # far more trials than any machine runs in 25 s: a fast machine must not finish the sweep within its budget
    proc = run_cli(*sweep_args(tmp_path, "budget", samples=400, epochs=2), "--time-budget", "25s", cwd=tmp_path,
                   timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rec = record(tmp_path, "budget")
    assert rec["state"] == "complete" and "time budget of 25 s spent" in rec["stopped_by"] and rec["winner"]
    assert rec["spec"]["time_budget_s"] == 25 and rec["elapsed_s"] >= 25
    table = rows(tmp_path, "budget")
    assert 0 < len(table) < 400 and all(r["status"] in ("finished", "stopped") for r in table)
    parent, children, versions = mlflow_state(tmp_path, "budget")
    assert parent.info.status == "FINISHED" and len(versions) == 1
    assert len(children) == len(table) and not [r for r in children if r.info.status == "RUNNING"]
    assert "sweep ended early: time budget of 25 s spent" in " ".join(proc.stdout.split())


@pytest.mark.integration
def test_stop_at_a_target_ends_the_sweep_once_a_trial_reaches_it(tmp_path):
    proc = run_cli(*sweep_args(tmp_path, "target", samples=30, epochs=3), "--stop-at", "val_top1=20",
                   cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rec = record(tmp_path, "target")
    assert rec["state"] == "complete" and rec["stopped_by"].startswith("target val_top1>=20 reached by trial ")
    table = rows(tmp_path, "target")
    assert len(table) < 30 and all(r["epochs"] >= 1 for r in table)
    assert max(r["best_val_top1"] for r in table) >= 20
    assert rec["spec"]["stop_at"] == "val_top1=20"


@pytest.mark.integration
def test_kill9_of_the_driver_leaves_no_ray_process_once_the_next_command_ran(tmp_path):
    import psutil

    proc = start_cli(*sweep_args(tmp_path, "k9", samples=4, epochs=2), cwd=tmp_path)
    wait_for_lines(proc, " after epoch ", 1)
    os.kill(proc.pid, signal.SIGKILL)  # the driver alone, as the OOM killer or `kill -9 PID` would
    proc.wait()

    def left_by(pid: int) -> list[int]:
        mine = []
        for p in psutil.process_iter():
            try:
                if any(f"_{pid}/" in f.path and "/session_" in f.path for f in p.open_files()):
                    mine.append(p.pid)
            except psutil.Error:
                continue
        return mine

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not left_by(proc.pid):
        time.sleep(1)
    print(f"\nleft by the killed driver: {len(left_by(proc.pid))} Ray process(es)")
    resumed = run_cli(*SMALL, "--resume", "--name", "k9", cwd=tmp_path, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-2000:]
    assert left_by(proc.pid) == []
    assert record(tmp_path, "k9")["state"] == "complete" and len(rows(tmp_path, "k9")) == 4


@pytest.mark.integration
def test_reaping_leaves_a_cluster_started_by_ray_start_alone():
    """`ray start --head` exits at once, so its session is named after a dead process: its GCS marks it alive."""
    import shutil
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    import psutil

    from tests.conftest import free_port
    from tuner.cluster import reap_orphans

    temp = tempfile.mkdtemp(prefix="/tmp/rs")  # short: Ray's socket paths must fit 107 bytes
    ray = str(Path(sys.executable).with_name("ray"))
    subprocess.run([ray, "start", "--head", f"--port={free_port()}", "--num-cpus=1", "--include-dashboard=false",
                    f"--temp-dir={temp}", "--disable-usage-stats"], check=True, capture_output=True, timeout=180)

    def cluster() -> list[psutil.Process]:
        found = []
        for p in psutil.process_iter():
            try:
                if any(f.path.startswith(temp) for f in p.open_files()):
                    found.append(p)
            except psutil.Error:
                continue
        return found

    try:
        before = {p.pid for p in cluster()}
        assert len(before) >= 2  # at least the GCS and the raylet
        reap_orphans()
        time.sleep(1)
        assert {p.pid for p in cluster()} == before
    finally:
        for p in cluster():
            p.kill()
        shutil.rmtree(temp, ignore_errors=True)
