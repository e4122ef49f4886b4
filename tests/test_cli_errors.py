"""Bad input: one clear line, a non-zero exit, no traceback, no sweep folder and no MLflow run left behind."""

import subprocess
import sys

import pytest

from tests.conftest import REPO
from tuner.run import EXIT_USER_ERROR, main


def run_main(capsys, tmp_path, *args):
    storage = tmp_path / "sweeps"
    code = main(["--storage", str(storage), "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", *args])
    out = capsys.readouterr()
    return code, (out.out + out.err).strip(), storage


@pytest.mark.parametrize("args,needle", [
    (["--space", "nope"], "unknown space 'nope'; known spaces: cifar100_baselines, cnn_grid"),
    (["--space", "resnet_rsb", "--set", "nope=1"], "unknown config key 'nope'"),
    (["--space", "resnet_rsb", "--set", "lr=fast"], "config key 'lr' needs a float"),
    (["--space", "resnet_rsb", "--set", "opt=adam"], "allowed values: sgd, adamw, lamb"),
    (["--space", "resnet_rsb", "--num-samples", "0"], "--num-samples must be a positive integer"),
    (["--space", "resnet_rsb", "--max-epochs", "0"], "--max-epochs must be a positive integer"),
    (["--space", "resnet_rsb", "--dataset", "cifar10", "--data-dir", "/nonexistent/cifar"], "does not exist"),
    (["--space", "resnet_rsb", "--dataset", "folder"], "dataset 'folder' needs --data-dir PATH"),
    (["--space", "resnet_rsb", "--resume"], "--resume needs --name"),
    (["--space", "resnet_rsb", "--resume", "--name", "never-ran"], "no sweep to resume"),
    (["--space", "resnet_rsb", "--storage", "s3://bucket/sweeps"], "object-store URIs are not supported"),
    ([], "name a search space with --space NAME"),
    (["--space", "resnet_rsb", "--dataset", "imagenet"], "unknown dataset 'imagenet'; choose one of: digits"),
    (["--space", "resnet_rsb", "--set", "batch_size=1.5"], "config key 'batch_size' needs an int, got '1.5'"),
    (["--space", "resnet_rsb", "--set", "hflip=maybe"], "config key 'hflip' needs a bool, got 'maybe'"),
    (["--space", "resnet_rsb", "--set", "lr=100"], "config key 'lr' got 100.0; it must lie in [1e-08, 10.0]"),
    (["--space", "resnet_rsb", "--set", "lr"], "--set 'lr': write KEY=VALUE"),
    (["--space", "resnet_rsb", "--max-concurrent", "0"], "--max-concurrent must be a positive integer"),
    (["--space", "resnet_rsb", "--cpus-per-trial", "0"], "--cpus-per-trial > 0"),
    (["--space", "resnet_rsb", "--gpus-per-trial", "lots"], "--gpus-per-trial 'lots': give a number of GPUs"),
    (["--space", "resnet_rsb", "--set", "pretrained=/nonexistent/w.pt"], "pretrained=/nonexistent/w.pt: no such file"),
])
def test_one_line_and_nothing_written(capsys, tmp_path, args, needle):
    code, text, storage = run_main(capsys, tmp_path, *args)
    assert code == EXIT_USER_ERROR
    assert needle in text and text.startswith("error:")
    assert len(text.splitlines()) == 1 and "Traceback" not in text
    assert not storage.exists()


def test_gpus_requested_without_gpus(capsys, tmp_path):
    """Checked against the real Ray instance: fails at once instead of leaving trials pending."""
    import mlflow

    code, text, storage = run_main(capsys, tmp_path, "--space", "resnet_rsb", "--dataset", "digits",
                                   "--gpus-per-trial", "0.25")
    assert code == EXIT_USER_ERROR and "--gpus-per-trial 0.25 but the Ray cluster has no GPU" in text
    assert not storage.exists()
    runs = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").search_runs(
        [e.experiment_id for e in mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").search_experiments()])
    assert runs == []


def test_real_process_prints_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tuner.run", "--space", "resnet_rsb", "--set", "batch_size=-4",
                           "--storage", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == EXIT_USER_ERROR
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "config key 'batch_size' got -4; it must lie in [2, 65536]" in proc.stdout
    assert list(tmp_path.iterdir()) == []


def test_list_spaces(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # one line per space, to read the cells
    assert main(["--list-spaces"]) == 0
    out = capsys.readouterr().out
    assert "resnet_rsb" in out
    rows = {line.split("│")[1].strip(): [cell.strip() for cell in line.split("│")[2:6]]
            for line in out.splitlines() if line.startswith("│") and line.split("│")[1].strip()}
    assert rows["cnn_grid"] == ["cifar10", "grid", "864", "50"]  # every cell of the grid, once
    assert rows["vit_pretrain_finetune"] == ["cifar100→cifar10", "random", "8 x 2", "100"]


def test_error_line_keeps_the_first_line_and_marks_a_cut():
    from trainables.errors import error_line

    assert error_line(ValueError("bad shape\n  at layer 3\n")) == "ValueError: bad shape"
    assert error_line(OSError("x" * 50 + " tail"), limit=20) == "OSError: " + "x" * 20 + "..."
    assert error_line(KeyError()) == "KeyError"


def test_list_spaces_in_80_columns_puts_descriptions_below(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["--list-spaces"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert all(len(line) <= 80 for line in lines) and not any("…" in line for line in lines)  # nothing cut
    assert any(line.startswith("cnn_grid: CIFAR-10 grid of 864 runs") for line in lines)
