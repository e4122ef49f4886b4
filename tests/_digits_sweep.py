"""One small real digits sweep shared by tests/test_report.py and tests/test_export_predict.py.

Made once per test session (the first module that asks runs it; the other gets the same folder): a real local
Ray instance started by the CLI, the real `mlflow server` of tests/conftest.py, resnet_rsb's searched recipe on
a quarter-width cnn_basic, 4 trials x 3 epochs with ASHA (grace 1, reduction 2), so some trials stop early.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, run_cli

SPACE, DATASET = "resnet_rsb", "digits"
REGISTERED = f"{SPACE}-{DATASET}"
_made: dict[str, Path] = {}


def digits_sweep(tmp_path_factory, mlflow_server) -> Path:
    key = mlflow_server.uri
    if key not in _made:
        root = tmp_path_factory.mktemp("digits-sweep")
        proc = run_cli("--space", SPACE, "--dataset", DATASET, "--num-samples", "4", "--max-epochs", "3",
                       "--set", "model=cnn_basic", "--set", "width=0.25", "--storage", str(root / "sweeps"),
                       "--name", "report", "--mlflow-uri", mlflow_server.uri, cwd=root)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        sweep_dir = root / "sweeps" / "report"
        assert json.loads((sweep_dir / "sweep.json").read_text())["completed"]
        _made[key] = sweep_dir
    return _made[key]


def run_module(module: str, *args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m tuner.MODULE ARGS` in a real subprocess, as a user runs it."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update({"PYTHONUNBUFFERED": "1", "COLUMNS": "160", "PYTHONPATH": str(REPO)})
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
