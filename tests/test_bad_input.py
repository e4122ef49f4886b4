"""Bad input that needs files, data or a Ray instance to show: one `error:` line, exit 2, nothing half-written
(no sweep folder, no MLflow run). The cases that need none of these are in tests/test_cli_errors.py; a corrupt
checkpoint on --resume is a sweep that carries on (test_corrupt_checkpoint_on_resume_falls_back)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from tests.conftest import REPO, write_image_folder
from tuner.run import EXIT_USER_ERROR, main

DIGITS = ["--space", "resnet_rsb", "--dataset", "digits", "--num-samples", "1", "--max-epochs", "1",
          "--set", "model=cnn_basic", "--set", "width=0.25"]


def run_main(capsys, tmp_path, *args, storage: Path | None = None):
    storage = storage or tmp_path / "sweeps"
    code = main(["--storage", str(storage), "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", *args])
    out = capsys.readouterr()
    # the error is the one line on stdout; stderr may hold MLflow's log lines from creating a fresh SQLite store
    assert "Traceback" not in out.err, out.err
    return code, out.out.strip(), storage


def mlflow_runs(tmp_path) -> list:
    db = tmp_path / "mlflow.db"
    if not db.exists():
        return []
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{db}")
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def assert_one_line(code: int, text: str, needle: str) -> None:
    assert code == EXIT_USER_ERROR, text
    assert text.startswith("error:") and len(text.splitlines()) == 1, text
    assert needle in text, text
    assert "Traceback" not in text


@pytest.fixture
def offline(monkeypatch):
    """No test reaches the network: torchvision's CIFAR download fails as it does offline."""
    import torchvision.datasets.cifar as cifar

    def refuse(*args, **kwargs):
        raise URLError("offline (test)")

    monkeypatch.setattr(cifar, "download_and_extract_archive", refuse)


def fake_cifar10(root: Path) -> Path:
    """A cifar-10-batches-py folder with torchvision's file names and pickled batches of the right layout."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 255, (20, 3072), dtype=np.uint8), "labels": list(range(10)) * 2}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    return folder


def _data_case(kind: str, tmp_path: Path) -> tuple[list[str], str]:
    """(extra CLI args, expected text) of each bad-data case; builds the data in tmp_path."""
    data = tmp_path / "data"
    if kind == "data dir missing":
        return ["--dataset", "cifar10", "--data-dir", str(data / "nope")], "does not exist"
    if kind == "data dir empty (cifar10, offline)":
        data.mkdir()
        return ["--dataset", "cifar10", "--data-dir", str(data)], "put the extracted 'cifar-10-batches-py' folder"
    if kind == "data dir empty (folder)":
        data.mkdir()
        return ["--dataset", "folder", "--data-dir", str(data)], "has no 'train/' subfolder"
    if kind == "cifar10 batch file truncated":
        batch = fake_cifar10(data) / "data_batch_3"
        batch.write_bytes(batch.read_bytes()[:1000])  # a copy cut short
        return ["--dataset", "cifar10", "--data-dir", str(data)], "incomplete or corrupt"
    if kind == "image folder with one class":
        write_image_folder(data, classes=1, per_class=6)
        return ["--dataset", "folder", "--data-dir", str(data)], "has 1 class folder(s); a classifier needs at least 2"
    if kind == "image folder with a broken image":
        write_image_folder(data, classes=2, per_class=6)
        broken = data / "train" / "class_1" / "3.png"
        broken.write_bytes(broken.read_bytes()[:40])
        return ["--dataset", "folder", "--data-dir", str(data)], f"cannot read image {broken}"
    raise AssertionError(kind)


DATA_CASES = ["data dir missing", "data dir empty (cifar10, offline)", "data dir empty (folder)",
              "cifar10 batch file truncated", "image folder with one class", "image folder with a broken image"]


@pytest.mark.parametrize("kind", DATA_CASES)
def test_bad_data(kind, capsys, tmp_path, offline):
    extra, needle = _data_case(kind, tmp_path)
    code, text, storage = run_main(capsys, tmp_path, "--space", "resnet_rsb", *extra)
    assert_one_line(code, text, needle)
    assert not storage.exists() and mlflow_runs(tmp_path) == []


def _weights_case(kind: str, tmp_path: Path) -> tuple[str, str]:
    from trainables.models import create_model

    if kind == "another model's weights":
        path = tmp_path / "resnet18.pt"
        torch.save(create_model("resnet18", 10).state_dict(), path)
        return str(path), "does not fit model Sequential: 30 missing key(s)"
    if kind == "right model, other width":
        path = tmp_path / "cnn_wide.safetensors"
        from safetensors.torch import save_file

        save_file(create_model("cnn_basic", 10, width=1.0).state_dict(), str(path))
        return str(path), "wrong-shape key(s) (0.weight"
    if kind == "not a weights file":
        path = tmp_path / "notes.pt"
        path.write_text("these are not weights")
        return str(path), "not a PyTorch (torch.save) or safetensors weights file"
    if kind == "truncated weights file":
        path = tmp_path / "cnn.pt"
        torch.save(create_model("cnn_basic", 10, width=0.25).state_dict(), path)
        path.write_bytes(path.read_bytes()[:2000])
        return str(path), "is unreadable"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["another model's weights", "right model, other width", "not a weights file",
                                  "truncated weights file"])
def test_pretrained_weights_that_do_not_fit(kind, capsys, tmp_path):
    """Checked on the driver before Ray or MLflow are touched (preflight_models)."""
    path, needle = _weights_case(kind, tmp_path)
    code, text, storage = run_main(capsys, tmp_path, *DIGITS, "--set", f"pretrained={path}")
    assert_one_line(code, text, needle)
    assert f"pretrained weights file {path}" in text
    assert not storage.exists() and mlflow_runs(tmp_path) == []


@pytest.mark.parametrize("model,needle", [
    ("nope", "unknown model 'nope'; choose one of: cnn_basic"),
    ("timm/not_a_timm_net", "timm has no model 'not_a_timm_net'"),
])
def test_unknown_model(model, needle, capsys, tmp_path):
    code, text, storage = run_main(capsys, tmp_path, *DIGITS, "--set", f"model={model}")
    assert_one_line(code, text, needle)
    assert not storage.exists() and mlflow_runs(tmp_path) == []


def test_unwritable_storage_under_a_file(capsys, tmp_path):
    """A path below a regular file can never be created, whoever runs the sweep (root included)."""
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    code, text, _ = run_main(capsys, tmp_path, *DIGITS, storage=blocker / "sub")
    assert_one_line(code, text, f"--storage {blocker / 'sub'} is not writable ({blocker} is not a writable folder)")
    assert blocker.read_text() == "not a folder" and mlflow_runs(tmp_path) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="runs as root, where chmod 0o500 does not stop writes; the storage-"
                                                "under-a-file case covers unwritable storage")
def test_unwritable_storage_read_only_folder(capsys, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code, text, _ = run_main(capsys, tmp_path, *DIGITS, storage=locked / "sweeps")
        assert_one_line(code, text, "is not writable")
        assert list(locked.iterdir()) == [] and mlflow_runs(tmp_path) == []
    finally:
        locked.chmod(0o700)



def test_unreachable_address(capsys, tmp_path):
    """Refused by a socket probe within seconds (ray.init alone would retry for minutes); the time is printed."""
    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    code, text, storage = run_main(capsys, tmp_path, *DIGITS, "--address", f"127.0.0.1:{port}")
    print(f"\nunreachable --address refused after {time.monotonic() - t0:.1f} s")
    assert_one_line(code, text, f"cannot join the Ray cluster at --address 127.0.0.1:{port}: nothing answers")
    assert not storage.exists() and mlflow_runs(tmp_path) == []


def _write_finished_looking_sweep(tmp_path: Path, space: str = "resnet_rsb") -> Path:
    from tuner.folder import SweepFolder, SweepRecord
    from tuner.spec import build_spec

    spec = build_spec(space=space, dataset="digits", storage=str(tmp_path / "sweeps"), name="old",
                      num_samples=1, max_epochs=1)
    SweepFolder(spec.sweep_dir).write_record(SweepRecord(spec, parent_run_id="0" * 32))
    return spec.sweep_dir


def test_resume_with_another_space(capsys, tmp_path):
    sweep = _write_finished_looking_sweep(tmp_path, "resnet_rsb")
    before = sorted(p.name for p in sweep.iterdir())
    code, text, _ = run_main(capsys, tmp_path, "--space", "vit_scratch", "--resume", "--name", "old")
    assert_one_line(code, text, "sweep 'old' was made with space 'resnet_rsb', not 'vit_scratch'")
    assert sorted(p.name for p in sweep.iterdir()) == before and mlflow_runs(tmp_path) == []


def test_resume_with_unreadable_record(capsys, tmp_path):
    sweep = _write_finished_looking_sweep(tmp_path)
    (sweep / "sweep.json").write_text('{"spec": {"space": "resnet_rs')  # cut short
    code, text, _ = run_main(capsys, tmp_path, "--space", "resnet_rsb", "--resume", "--name", "old")
    assert_one_line(code, text, "sweep.json is unreadable")
    assert mlflow_runs(tmp_path) == []


def test_name_taken_without_resume(capsys, tmp_path):
    sweep = _write_finished_looking_sweep(tmp_path)
    record = (sweep / "sweep.json").read_text()
    code, text, _ = run_main(capsys, tmp_path, *DIGITS, "--name", "old")
    assert_one_line(code, text, "a sweep named 'old' already exists")
    assert (sweep / "sweep.json").read_text() == record and mlflow_runs(tmp_path) == []


# --- a corrupt checkpoint on --resume: the trial carries on from an older checkpoint, the sweep finishes ---------

def test_resume_state_skips_torn_checkpoints(tmp_path):
    """Unit: the newest readable checkpoint wins; none readable means a fresh start (None)."""
    from ray import tune

    from trainables.classify import CHECKPOINT_FILE, resume_state, save_atomic

    trial = tmp_path / "trial_x"
    for epoch in (1, 2, 3):
        folder = trial / f"checkpoint_{epoch - 1:06d}"
        folder.mkdir(parents=True)
        save_atomic({"model": {}, "recipe": {}, "epoch": epoch, "best_val_top1": 1.0}, str(folder / CHECKPOINT_FILE))
    latest = trial / "checkpoint_000002" / CHECKPOINT_FILE
    assert resume_state(tune.Checkpoint(str(latest.parent)))["epoch"] == 3
    latest.write_bytes(latest.read_bytes()[:50])
    with pytest.warns(UserWarning, match="unreadable"):
        assert resume_state(tune.Checkpoint(str(latest.parent)))["epoch"] == 2
    for folder in trial.iterdir():
        (folder / CHECKPOINT_FILE).write_bytes(b"")
    with pytest.warns(UserWarning, match="starts again from epoch 1"):
        assert resume_state(tune.Checkpoint(str(latest.parent))) is None


PROBE_SPACE = """
import sys
from ray import tune
from search_spaces import SPACES, SearchSpace
SPACES["ckpt_probe"] = SearchSpace(
    name="ckpt_probe", description="a good and a hopeless trial", reproduces="-", dataset="digits",
    fixed={"model": "cnn_basic", "width": 0.25, "image_size": 16, "batch_size": 32, "opt": "sgd", "sched": "constant",
           "weight_decay": 0.0},
    params={"lr": tune.grid_search([0.05, 1e-8])}, search="grid", asha=None, num_samples=1, max_epochs=12)
from tuner.run import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow  # minutes: make test-all runs it; the fallback itself is test_resume_state_skips_torn_checkpoints
@pytest.mark.integration
def test_corrupt_checkpoint_on_resume_falls_back(tmp_path):
    """SIGKILL a sweep, truncate every checkpoint of one unfinished trial but its first, --resume: the trial goes
    on from the checkpoint that still loads (a warning, not a failed trial), the sweep finishes, nothing doubles.

    The damaged trial is the hopeless one (lr 1e-8), so the winner tested at the end is never its checkpoint."""
    script = tmp_path / "probe.py"
    script.write_text(PROBE_SPACE)
    args = [sys.executable, str(script), "--space", "ckpt_probe", "--name", "torn", "--max-concurrent", "2",
            "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--storage", str(tmp_path / "sweeps")]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update({"PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "COLUMNS": "160"})
    sweep = tmp_path / "sweeps" / "torn"
    # Tune saves its experiment state every second (not every 10 s); the kill comes once the saved state is newer
    # than the hopeless trial's oldest kept checkpoint, so the state names it or a later one, and all but the
    # oldest are torn below: the resume must fall back to it
    proc = subprocess.Popen(args, cwd=tmp_path, env={**env, "TUNE_GLOBAL_CHECKPOINT_S": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    hopeless = None
    try:
        deadline = time.monotonic() + 300
        while hopeless is None and time.monotonic() < deadline and proc.poll() is None:
            states = [p.stat().st_mtime for p in sweep.glob("experiment_state-*.json")]
            for params in sweep.glob("trial_*/params.json"):
                try:
                    made = sorted(p.stat().st_mtime for p in params.parent.glob("checkpoint_*"))
                except FileNotFoundError:  # Ray deleted one just now
                    continue
                if '"lr": 1e-08' in params.read_text() and len(made) >= 3 and states and max(states) > made[0] + 0.1:
                    hopeless = params.parent
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray instance it started
        proc.wait()
    assert hopeless is not None, "the sweep ended before the hopeless trial had three checkpoints and a newer state"
    checkpoints = sorted(hopeless.glob("checkpoint_*"))
    kept_epoch = torch.load(checkpoints[0] / "checkpoint.pt", weights_only=True)["epoch"]
    for folder in checkpoints[1:]:
        file = folder / "checkpoint.pt"
        file.write_bytes(file.read_bytes()[:4096])  # torn: the zip's central directory is gone
    # and the checkpoint Ray's saved state names is gone too, as when Ray deleted it just before the kill
    state = json.loads(sorted(sweep.glob("experiment_state-*.json"))[-1].read_text())
    named = {json.loads(t)["trial_id"]: json.loads(r)["last_result"].get("checkpoint_dir_name")
             for t, r in state["trial_data"]}[hopeless.name.removeprefix("trial_")]
    if named and named != checkpoints[0].name:
        shutil.rmtree(hopeless / named, ignore_errors=True)

    resumed = subprocess.run([*args, "--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    rows = {r["lr"]: r for r in pq.read_table(sweep / "trials.parquet").to_pylist()}
    assert len(rows) == 2 and all(r["status"] == "finished" and r["epochs"] == 12 for r in rows.values()), \
        {lr: (r["status"], r["epochs"], r["error"]) for lr, r in rows.items()}
    assert rows[0.05]["best_val_top1"] > rows[1e-8]["best_val_top1"]  # the winner is the undamaged trial
    # Ray's result log of the damaged trial: after the resume it went on from the one checkpoint left whole
    results = [json.loads(line) for line in (hopeless / "result.json").read_text().splitlines() if line.strip()]
    assert results[-1]["restored_epoch"] == kept_epoch and results[-1]["epoch"] == 12, results[-1]
    # it had newer checkpoints than the one it went on from, all torn (Ray's result.json may lag them, so the
    # folders are the evidence; test_resume_state_skips_torn_checkpoints pins the fallback itself)
    assert len(checkpoints) >= 2 and kept_epoch >= 1
    print(f"\ntorn {len(checkpoints) - 1} checkpoint(s); the trial went on from epoch {kept_epoch}")
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("ckpt_probe").experiment_id])
    children = [r for r in runs if "trial_id" in r.data.tags]
    assert len(children) == 2 and not [r for r in runs if r.info.status == "RUNNING"]
    for run in children:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_top1")]
        assert sorted(steps) == list(range(1, 13))  # every epoch once, none logged twice


def test_a_deleted_latest_checkpoint_is_put_back_before_resume(tmp_path):
    """Ray's saved state may name a checkpoint Ray deleted just before the driver died; the resume puts the
    trial's newest older checkpoint in its place (or an empty folder: the trial starts again)."""
    from tuner.experiment import restore_deleted_latest_checkpoints

    def trial(trial_id, latest):
        return [json.dumps({"trial_id": trial_id}), json.dumps({"last_result": {"checkpoint_dir_name": latest}})]

    (tmp_path / "experiment_state-2026.json").write_text(json.dumps({"trial_data": [
        trial("a", "checkpoint_000004"), trial("b", "checkpoint_000002"), trial("c", "checkpoint_000001")]}))
    for name, content in (("trial_a/checkpoint_000001", b"one"), ("trial_a/checkpoint_000003", b"three"),
                          ("trial_a/checkpoint_000006", b"six"), ("trial_c/checkpoint_000001", b"kept")):
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / "checkpoint.pt").write_bytes(content)
    (tmp_path / "trial_b").mkdir()
    restored = restore_deleted_latest_checkpoints(tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in restored) == ["trial_a/checkpoint_000004",
                                                                            "trial_b/checkpoint_000002"]
    assert (tmp_path / "trial_a/checkpoint_000004/checkpoint.pt").read_bytes() == b"three"  # newest older one
    assert list((tmp_path / "trial_b/checkpoint_000002").iterdir()) == []  # nothing older: starts again
    assert (tmp_path / "trial_c/checkpoint_000001/checkpoint.pt").read_bytes() == b"kept"


def test_a_lost_searcher_state_is_one_line_before_ray_would_start_over(tmp_path):
    """Ray's resume fails without the searcher's saved state and then starts the experiment again from nothing;
    the check before the restore names the missing or torn file and how to go on instead."""
    import ray.cloudpickle as cloudpickle

    from trainables.errors import UserError
    from tuner.experiment import check_saved_search_state

    experiment = tmp_path / "sweep"
    experiment.mkdir()
    (experiment / "sweep.json").write_text("{}")
    check_saved_search_state(experiment)  # a grid's experiment: no searcher state to check
    (experiment / "search_gen_state-2026-12-02_10-00-00.json").write_bytes(cloudpickle.dumps({"counter": 3}))
    with pytest.raises(UserError, match=r"incomplete \(no searcher-state file\).*again under a new --name"):
        check_saved_search_state(experiment)
    (experiment / "trials.parquet").write_bytes(b"")  # the sweep wrote its table before: it can seed a new one
    with pytest.raises(UserError, match=r"incomplete \(no searcher-state file\).*--warm-start .*sweep --name"):
        check_saved_search_state(experiment)
    searcher = experiment / "searcher-state-2026-12-02_10-00-00.pkl"
    searcher.write_bytes(cloudpickle.dumps({"space": {"lr": 1}})[:5])  # torn
    with pytest.raises(UserError, match=r"searcher-state-2026-12-02_10-00-00.pkl is unreadable"):
        check_saved_search_state(experiment)
    searcher.write_bytes(cloudpickle.dumps({"space": {"lr": 1}}))
    check_saved_search_state(experiment)  # whole: Ray restores it
