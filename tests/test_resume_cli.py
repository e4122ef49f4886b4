"""--resume of a recorded sweep: its MLflow store named in any spelling (a SLURM requeue passes the relative
sqlite:///mlflow.db again), its space file gone, and tuner.sync recording the store it synced to. No Ray: a
completed sweep answers `nothing to resume` after these checks, and sync runs against local SQLite stores."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tuner.folder import SweepFolder, SweepRecord, SweepState
from tuner.run import EXIT_USER_ERROR, main, same_store
from tuner.spec import build_spec
from tuner.sync import store_key, sync

SPACE_YAML = """\
name: resume_me
description: a small space whose file goes away
dataset: digits
fixed: {model: cnn_basic, width: 0.25}
params:
  lr: {loguniform: [1.0e-4, 1.0e-2]}
num_samples: 2
max_epochs: 1
"""


def finished_sweep(tmp_path: Path, tracking_uri: str, space: str = "resnet_rsb", **record) -> Path:
    """A completed sweep's folder (sweep.json only): --resume checks it, then has nothing to run."""
    spec = build_spec(space=space, dataset="digits", storage=str(tmp_path / "sweeps"), name="old", num_samples=1,
                      max_epochs=1)
    values = {"parent_run_id": "0" * 32, "state": SweepState.COMPLETE, "winner": "t1",
              "test": {"top1": 91.0, "top5": 99.0, "loss": 0.3, "images": 10}, **record}
    SweepFolder(spec.sweep_dir).write_record(SweepRecord(spec, tracking_uri=tracking_uri, **values))
    return spec.sweep_dir


def resume(capsys, tmp_path: Path, *args: str) -> tuple[int, str]:
    code = main(["--resume", "--name", "old", "--storage", str(tmp_path / "sweeps"), *args])
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    return code, out.out.strip()


@pytest.mark.parametrize("given,recorded", [
    ("sqlite:///mlflow.db", "sqlite:///{tmp}/mlflow.db"),  # relative, as the sbatch passes it; the record is absolute
    ("sqlite:///./sub/../mlflow.db", "sqlite:///{tmp}/mlflow.db"),
    ("http://127.0.0.1:5000/", "http://127.0.0.1:5000"),
    ("HTTP://LocalHost:80", "http://localhost/"),
    ("https://mlflow.example.org:443/", "https://mlflow.example.org"),
    ("mlruns", "file://{tmp}/mlruns"),
])
def test_the_same_store_in_another_spelling(tmp_path, monkeypatch, given, recorded):
    monkeypatch.chdir(tmp_path)
    assert same_store(given, recorded.format(tmp=tmp_path))


@pytest.mark.parametrize("given,recorded", [
    ("sqlite:///other.db", "sqlite:///{tmp}/mlflow.db"),
    ("http://127.0.0.1:5001", "http://127.0.0.1:5000"),
    ("http://127.0.0.1:5000/prefix", "http://127.0.0.1:5000"),
    ("https://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ("postgresql://u@db/mlflow", "postgresql://u@db/other"),
])
def test_another_store(tmp_path, monkeypatch, given, recorded):
    monkeypatch.chdir(tmp_path)
    assert not same_store(given, recorded.format(tmp=tmp_path))


def test_resume_with_the_relative_sqlite_uri_of_the_recorded_store(tmp_path, monkeypatch, capsys):
    """deploy/slurm/sweep.sbatch's requeue: `--resume --mlflow-uri sqlite:///mlflow.db` from the same folder."""
    monkeypatch.chdir(tmp_path)
    finished_sweep(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}")
    code, text = resume(capsys, tmp_path, "--space", "resnet_rsb", "--mlflow-uri", "sqlite:///mlflow.db")
    assert code == 0 and "sweep old is already complete" in text, text


def test_resume_with_a_trailing_slash_on_the_server_uri(tmp_path, capsys):
    finished_sweep(tmp_path, "http://127.0.0.1:5000")
    code, text = resume(capsys, tmp_path, "--space", "resnet_rsb", "--mlflow-uri", "http://127.0.0.1:5000/")
    assert code == 0 and "already complete" in text, text


def test_resume_with_another_store_is_still_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    finished_sweep(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}")
    code, text = resume(capsys, tmp_path, "--space", "resnet_rsb", "--mlflow-uri", "sqlite:///elsewhere.db")
    assert code == EXIT_USER_ERROR and len(text.splitlines()) == 1, text
    assert text.startswith(f"error: sweep 'old' is tracked in MLflow at sqlite:///{tmp_path / 'mlflow.db'}, not "
                           f"sqlite:///elsewhere.db; to continue it there, first replay it"), text


def test_resume_after_its_space_file_was_deleted(tmp_path, capsys):
    """sweep.json keeps the whole space: the file is not needed, and a dim line says the recorded copy runs."""
    space_file = tmp_path / "spaces" / "resume_me.yaml"
    space_file.parent.mkdir()
    space_file.write_text(SPACE_YAML)
    sweep = finished_sweep(tmp_path, "http://127.0.0.1:5000", space=str(space_file))
    assert json.loads((sweep / "sweep.json").read_text())["spec"]["space"] == "resume_me"
    space_file.unlink()
    code, text = resume(capsys, tmp_path, "--space", str(space_file))
    assert code == 0, text
    assert f"{space_file} is gone; sweep 'old' goes on with the space recorded in its sweep.json ('resume_me')" \
        in " ".join(text.split()), text
    assert "already complete" in text


def test_resume_with_a_present_space_file_of_another_space_is_refused(tmp_path, capsys):
    space_file = tmp_path / "resume_me.yaml"
    space_file.write_text(SPACE_YAML)
    finished_sweep(tmp_path, "http://127.0.0.1:5000", space=str(space_file))
    other = tmp_path / "other.yaml"
    other.write_text(SPACE_YAML.replace("name: resume_me", "name: other"))
    code, text = resume(capsys, tmp_path, "--space", str(other))
    assert code == EXIT_USER_ERROR and "was made with space 'resume_me', not 'other'" in text, text


def _parent_in(db: Path) -> str:
    from tuner import tracking

    client = tracking.connect(f"sqlite:///{db}")
    return tracking.start_parent_run(client, experiment="resnet_rsb", run_name="old", tags={}, params={})


def test_sync_records_the_store_it_synced_to_when_the_store_moved(tmp_path, monkeypatch):
    """A moved mlflow.db still holds the parent run: sync finds it there and sweep.json names the new place, so
    --resume there is not refused as tracked elsewhere."""
    old_db, new_db = tmp_path / "old" / "mlflow.db", tmp_path / "new" / "mlflow.db"
    old_db.parent.mkdir()
    parent = _parent_in(old_db)
    sweep = finished_sweep(tmp_path, f"sqlite:///{old_db}", parent_run_id=parent)
    new_db.parent.mkdir()
    shutil.move(old_db, new_db)
    monkeypatch.chdir(tmp_path)
    sync(sweep, "sqlite:///new/mlflow.db")
    record = SweepFolder(sweep).read_record()
    assert (record.parent_run_id, record.tracking_uri) == (parent, f"sqlite:///{new_db}")
    assert store_key(record.tracking_uri) == store_key("sqlite:///new/mlflow.db")


def test_sync_to_the_recorded_store_in_another_spelling_keeps_the_record(tmp_path, monkeypatch):
    db = tmp_path / "mlflow.db"
    parent = _parent_in(db)
    sweep = finished_sweep(tmp_path, f"sqlite:///{db}", parent_run_id=parent)
    before = (sweep / "sweep.json").read_text()
    monkeypatch.chdir(tmp_path)
    sync(sweep, "sqlite:///mlflow.db")
    assert (sweep / "sweep.json").read_text() == before
