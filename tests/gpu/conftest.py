"""tests/gpu: the correctness checks that `make gpu-check` runs (every test here is marked `gpu`).

They run on CUDA and skip without it, except in gpu-check's CPU form (GPUCHECK_FORM=cpu), where those that mean
something on a CPU run there at tiny sizes. This file and every test here import only the standard library,
numpy, pytest and torch at the top (and the project's Ray-free modules inside tests): never Ray, MLflow or Optuna,
which a GPU box may not have. With GPUCHECK_RESULTS set, each test's outcome and recorded properties are appended
to that file as JSON lines, which gpu-check reads back into its report.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

CPU_FORM = os.environ.get("GPUCHECK_FORM") == "cpu"


def pytest_configure(config) -> None:
    if CPU_FORM:
        torch.set_num_threads(1)  # tiny sizes on a shared CPU: extra threads only spin-wait for busy cores


@pytest.fixture
def device() -> torch.device:
    """CUDA when there is a GPU; the CPU in gpu-check's CPU form; else the test is skipped."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if CPU_FORM:
        return torch.device("cpu")
    pytest.skip("needs CUDA (gpu-check's CPU form runs it on the CPU)")


def outcome_message(report) -> str:
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2]).removeprefix("Skipped: ")
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        return " ".join(str(crash.message).split())[:400]
    return " ".join(str(report.longrepr or "").split()[-40:])[:400]


def pytest_runtest_logreport(report) -> None:
    path = os.environ.get("GPUCHECK_RESULTS")
    if not path or (report.when != "call" and report.passed):
        return
    line = {"test": report.nodeid.removeprefix("tests/gpu/"), "when": report.when, "outcome": report.outcome,
            "duration_s": round(report.duration, 3), "properties": dict(report.user_properties),
            "message": "" if report.passed else outcome_message(report)}
    with open(path, "a") as f:
        f.write(json.dumps(line, default=str) + "\n")
