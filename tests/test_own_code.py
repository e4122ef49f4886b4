"""Bring your own: search spaces from YAML, TOML and Python files outside the package, run as real sweeps; a model
from the user's own module, trained, registered and used for predictions; malformed space files and user models
that cannot be built are one line and nothing written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO, run_cli
from tuner.run import EXIT_USER_ERROR, main

YAML_SPACE = """\
name: my_lr_sweep
description: AdamW lr and weight decay for a small CNN
dataset: digits
fixed: {model: cnn_basic, width: 0.25, opt: adamw, sched: cosine, image_size: 16}
params:
  lr: {loguniform: [1.0e-4, 1.0e-2]}
  weight_decay: {loguniform: [1.0e-5, 1.0e-1]}
  batch_size: {choice: [32, 64]}
search: optuna
num_samples: 2
max_epochs: 1
asha: {grace_period: 1, reduction_factor: 2}
"""
TOML_SPACE = """\
name = "my_toml_sweep"
description = "SGD momentum and lr, a random search"
dataset = "digits"
search = "random"
num_samples = 2
max_epochs = 1
asha = false

[fixed]
model = "cnn_basic"
width = 0.25
opt = "sgd"
image_size = 16
batch_size = 32

[params]
lr = {loguniform = [1.0e-3, 1.0e-1]}
momentum = {uniform = [0.5, 0.95]}
"""
PY_SPACE = """\
from ray import tune

from search_spaces.base import Asha, SearchSpace

SPACE = SearchSpace(
    name="my_py_sweep", description="a grid over widths, in Python", reproduces="", dataset="digits",
    fixed={"model": "cnn_basic", "image_size": 16, "batch_size": 32, "lr": 3e-3},
    params={"width": tune.grid_search([0.25, 0.5])}, search="grid", asha=None, num_samples=1, max_epochs=1)
"""
USER_MODEL = """\
from torch import nn


def build(num_classes: int, image_size: int) -> nn.Module:
    \"\"\"A small CNN of the user's own.\"\"\"
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes))


def broken(num_classes: int, image_size: int):
    return "not a module"
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def user_package(folder: Path) -> Path:
    write(folder, "mynets/__init__.py", USER_MODEL)
    return folder


@pytest.mark.integration
@pytest.mark.parametrize("file,text,trials", [  # every format is parsed in test_space_files; one sweep in CI
    ("spaces/lr.yaml", YAML_SPACE, 2), pytest.param("elsewhere/sgd.toml", TOML_SPACE, 2, marks=pytest.mark.slow),
    pytest.param("py/grid_space.py", PY_SPACE, 2, marks=pytest.mark.slow)])
def test_a_space_file_runs_as_a_real_sweep(tmp_path, file, text, trials):
    space = write(tmp_path, file, text)
    proc = run_cli("--space", str(space), "--name", "own", "--mlflow-uri", f"sqlite:///{tmp_path / 'm.db'}",
                   cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = pq.read_table(tmp_path / "sweeps" / "own" / "trials.parquet").to_pylist()
    assert len(rows) == trials and all(r["status"] in ("finished", "stopped") for r in rows)
    record = json.loads((tmp_path / "sweeps" / "own" / "sweep.json").read_text())
    assert record["spec"]["space_file"] == str(space) and record["spec"]["space_content"]["dataset"] == "digits"

    # the record keeps the whole space: --resume needs no file, the space's name does
    space.unlink()
    again = run_cli("--space", record["spec"]["space"], "--resume", "--name", "own", cwd=tmp_path)
    assert again.returncode == 0 and "already complete" in again.stdout, again.stdout


def test_a_changed_space_file_is_said_on_resume_and_the_recorded_space_runs(tmp_path, capsys):
    space = write(tmp_path, "spaces/lr.yaml", YAML_SPACE)
    from tuner.folder import SweepFolder, SweepRecord
    from tuner.spec import build_spec

    from tuner.folder import SweepState

    spec = build_spec(space=str(space), storage=str(tmp_path / "sweeps"), name="own")
    SweepFolder(spec.sweep_dir).write_record(SweepRecord(spec, parent_run_id="0" * 32, state=SweepState.COMPLETE,
                                                         winner="t0", test={"top1": 90.0}))
    space.write_text(YAML_SPACE.replace("1.0e-2]", "5.0e-2]"))
    code = main(["--space", str(space), "--resume", "--name", "own", "--storage", str(tmp_path / "sweeps")])
    out = " ".join(capsys.readouterr().out.split())
    assert code == 0 and "has changed since sweep 'own' started; it goes on with the space it started with" in out
    assert "already complete" in out
    other = write(tmp_path, "other.yaml", YAML_SPACE.replace("my_lr_sweep", "other"))
    code = main(["--space", str(other), "--resume", "--name", "own", "--storage", str(tmp_path / "sweeps")])
    assert code == EXIT_USER_ERROR  # another space's file is refused
    assert "was made with space 'my_lr_sweep', not 'other'" in capsys.readouterr().out


MALFORMED = [
    ("bad.yaml", "name: x\ndescription: y\ndataset: digits\nfixed: {}\nparams:\n  lr: {loguniform: [0, 1]}\n",
     "params.lr: loguniform [0, 1]: lower must be > 0"),
    ("bad.yaml", "name: x\ndescription: y\ndataset: digits\nfixed: {modle: cnn_basic}\nparams: {}\n",
     "fixed.modle: unknown config key 'modle' (did you mean 'model'?)"),
    ("bad.yaml", "name: x\ndescription: y\ndataset: digits\nfixed: {width: 20}\nparams: {}\n",
     "fixed.width: config key 'width' got 20"),
    ("bad.yaml", "name: x\ndescription: y\ndataset: digits\nfixed: {}\nparams:\n  lr: {logunifrom: [1, 2]}\n",
     "unknown distribution 'logunifrom' (did you mean 'loguniform'?)"),
    ("bad.yaml", "name: x\ndescription: y\ndataset: digits\nfixed: {}\nparams:\n  batch_size: {grid: 32}\n",
     "grid takes a non-empty list of values"),
    ("bad.yaml", "name: x\ndescription: y\ndataset: digits\nfixed: {}\nparams: {}\nserach: optuna\n",
     "unknown field 'serach' (did you mean 'search'?)"),
    ("bad.yaml", "name: x\ndescription: y\ndataset: digits\nfixed: {}\nparams: [lr\n", "not valid YAML"),
    ("bad.toml", "name = 'x'\ndescription = \n", "not valid TOML"),
    ("bad.yaml", "", "the file is empty"),
    ("bad.py", "SPACE = 1 / 0\n", "importing it raised ZeroDivisionError"),
    ("bad.yaml", "description: y\ndataset: digits\nfixed: {}\nparams: {}\n", "missing required field 'name'"),
]


@pytest.mark.parametrize("file,text,needle", MALFORMED)
def test_a_malformed_space_file_is_one_line_and_nothing_written(tmp_path, capsys, file, text, needle):
    space = write(tmp_path, file, text)
    code = main(["--space", str(space), "--storage", str(tmp_path / "sweeps"),
                 "--mlflow-uri", f"sqlite:///{tmp_path / 'm.db'}"])
    out = capsys.readouterr().out.strip()
    assert code == EXIT_USER_ERROR and out.startswith(f"error: {space}") and needle in out, out
    assert len(out.splitlines()) == 1 and not (tmp_path / "sweeps").exists() and not (tmp_path / "m.db").exists()


@pytest.mark.parametrize("model,needle", [
    ("nosuch.nets:build", "cannot import nosuch.nets (ModuleNotFoundError"),
    ("mynets:nothing", "mynets has no callable 'nothing'"),
    ("mynets:broken", "returned a str, not a torch.nn.Module"),
    ("mynets", "unknown model 'mynets'"),
])
def test_a_user_model_that_cannot_be_built_is_one_line(tmp_path, capsys, monkeypatch, model, needle):
    monkeypatch.syspath_prepend(str(user_package(tmp_path)))
    monkeypatch.delitem(sys.modules, "mynets", raising=False)  # another test's copy
    code = main(["--space", "resnet_rsb", "--dataset", "digits", "--set", f"model={model}", "--storage",
                 str(tmp_path / "sweeps"), "--mlflow-uri", f"sqlite:///{tmp_path / 'm.db'}"])
    out = capsys.readouterr().out.strip()
    assert code == EXIT_USER_ERROR and needle in out and len(out.splitlines()) == 1, out
    assert not (tmp_path / "sweeps").exists()


@pytest.mark.integration
def test_a_user_model_trains_is_registered_and_predicts(tmp_path):
    work = user_package(tmp_path / "project")
    proc = run_cli("--space", "resnet_rsb", "--dataset", "digits", "--set", "model=mynets:build",
                   "--num-samples", "2", "--max-epochs", "2", "--name", "mine",
                   "--mlflow-uri", f"sqlite:///{tmp_path / 'm.db'}", cwd=work, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = pq.read_table(work / "sweeps" / "mine" / "trials.parquet").to_pylist()
    assert {r["model"] for r in rows} == {"mynets:build"} and all(r["status"] in ("finished", "stopped")
                                                                  for r in rows)
    from PIL import Image

    from trainables.data import load_dataset

    image = load_dataset("digits").test_x[0].transpose(1, 2, 0)
    Image.fromarray(image).save(tmp_path / "seven.png")
    # from another folder, without the user's code on the path: the registered model needs none of it
    predicted = subprocess.run([sys.executable, "-m", "tuner.predict", "models:/resnet_rsb-digits/1",
                                str(tmp_path / "seven.png"), "--json", "--mlflow-uri", f"sqlite:///{tmp_path / 'm.db'}"],
                               cwd=tmp_path, capture_output=True, text=True, timeout=300,
                               env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(tmp_path)})
    assert predicted.returncode == 0, predicted.stdout + predicted.stderr
    top = [t["probability"] for t in json.loads(predicted.stdout)["predictions"][0]["top"]]
    assert len(top) == 3 and top == sorted(top, reverse=True) and 0 <= top[-1] and sum(top) <= 1 + 1e-6


@pytest.mark.slow
def test_own_code_shipped_to_workers_is_the_user_package(tmp_path, monkeypatch):
    from tuner import experiment
    from tuner.spec import build_spec

    monkeypatch.syspath_prepend(str(user_package(tmp_path)))
    monkeypatch.delitem(sys.modules, "mynets", raising=False)  # another test's copy
    spec = build_spec(space="resnet_rsb", dataset="digits", storage=str(tmp_path / "s"), sets=["model=mynets:build"])
    assert experiment.runtime_env(spec) == {"py_modules": [str(tmp_path / "mynets")]}
    plain = build_spec(space="resnet_rsb", dataset="digits", storage=str(tmp_path / "s"))
    assert experiment.runtime_env(plain) is None


@pytest.mark.integration
def test_an_npz_and_an_mnist_format_folder_run_as_real_sweeps(tmp_path):
    from tests.conftest import write_mnist_folder, write_npz

    small = ["--space", "resnet_rsb", "--num-samples", "1", "--max-epochs", "1", "--set", "model=cnn_basic",
             "--set", "width=0.25", "--set", "image_size=16", "--mlflow-uri", f"sqlite:///{tmp_path / 'm.db'}"]
    for dataset, data_dir, shape in (("npz", write_npz(tmp_path / "mine.npz", "NCHW"), "32px"),
                                     ("MNIST", write_mnist_folder(tmp_path / "mnist"), "28px")):
        proc = run_cli(*small, "--dataset", dataset, "--data-dir", str(data_dir), "--name", dataset, cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert f"on {dataset.lower()}: 10 classes, {shape}, train 1260 / val 140 / test 397" in proc.stdout
        rows = pq.read_table(tmp_path / "sweeps" / dataset / "trials.parquet").to_pylist()
        assert [r["status"] for r in rows] == ["finished"] and rows[0]["best_val_top1"] > 0.1
