"""`make gpu-check` in its CPU form, run as a GPU box runs it: no venv assumed, and Ray, MLflow and Optuna missing
(a sitecustomize on PYTHONPATH blocks their imports in every process the command starts). Checked: the JSON and
Markdown it writes, the figures saying "not measured: no GPU", the correctness checks that mean something on a CPU
having run and passed, tier 2 saying why it was skipped, and the time guard cutting a section and going on.
The small pure functions (peak table, rows, exit code) are checked in-process."""

from __future__ import annotations

import ast
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

BLOCKER = '''"""Test stand-in for a GPU box without Ray, MLflow and Optuna: importing any of them fails."""
import sys

BLOCKED = ("ray", "mlflow", "optuna")


class BlockImports:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by tests/test_gpu_check.py)", name=name)
        return None


sys.meta_path.insert(0, BlockImports())
'''
CPU_CHECKS_THAT_RUN = ("test_checkpoint_resumes_on_another_device[cpu-cpu]",
                       "test_resident_and_pinned_paths_give_identical_batches[1]",
                       "test_resident_and_pinned_paths_give_identical_batches[3]",
                       "test_the_packing_estimate_imports_without_ray")
FIGURE_PREFIXES = ("trainable_vs_bare: cnn_basic", "trainable_vs_bare: resnet18", "trainable_vs_bare: resnet50",
                   "trainable_vs_bare: vit_scratch", "data_path_vs_tutorial: resnet18", "packing_speedup: cnn_basic, 1",
                   "packing_speedup: cnn_basic, 2", "packing_speedup: resnet18, 1", "packing_speedup: resnet18, 2",
                   "mfu: resnet18 32 px batch 32", "mfu: resnet18 32 px batch 32, torch.compile", "tier2:")


def box_env(tmp: Path) -> dict[str, str]:
    """The environment of a GPU box without Ray, MLflow or Optuna, and without its GPU."""
    blocker = tmp / "blocker"
    blocker.mkdir(exist_ok=True)
    (blocker / "sitecustomize.py").write_text(BLOCKER)
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "GPUCHECK_RESULTS", "GPUCHECK_FORM")}
    return {**env, "PYTHONPATH": str(blocker), "CUDA_VISIBLE_DEVICES": "", "OUT": str(tmp / "box-out")}


@pytest.fixture(scope="module")
def cpu_form(tmp_path_factory):
    """`make gpu-check` once, as on a box: its output goes under $OUT/gpu-check."""
    tmp = tmp_path_factory.mktemp("gpu-check")
    proc = subprocess.run(["make", "-s", "gpu-check", f"GPU_PYTHON={sys.executable}"], cwd=REPO, env=box_env(tmp),
                          capture_output=True, text=True, timeout=900)
    out = tmp / "box-out" / "gpu-check"
    report = json.loads((out / "gpu-check.json").read_text()) if (out / "gpu-check.json").exists() else None
    return proc, out, report


def test_the_blocker_blocks_ray_mlflow_and_optuna(tmp_path):
    for name in ("ray", "mlflow", "optuna"):
        proc = subprocess.run([sys.executable, "-c", f"import {name}"], env=box_env(tmp_path), capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode != 0 and "blocked by tests/test_gpu_check.py" in proc.stderr, name


def test_cpu_form_exits_0_and_writes_json_and_markdown(cpu_form):
    proc, out, report = cpu_form
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert report is not None and (out / "gpu-check.md").exists()
    assert report["form"] == "cpu" and report["exit_code"] == 0 and report["failed_checks"] == []
    assert "env: ok" in proc.stdout and "wrote " in proc.stdout  # elapsed per section, printed as it goes


def test_every_section_ran_or_said_why(cpu_form):
    _, _, report = cpu_form
    sections = report["sections"]
    assert list(sections) == ["env", "pytest", "trainable_vs_bare", "data_path", "packing", "mfu", "mfu_compile",
                              "tier2"]
    assert {n: s["status"] for n, s in sections.items() if s["status"] not in ("ok", "skipped")} == {}
    assert all(s["elapsed_s"] > 0 for n, s in sections.items() if s["status"] == "ok")
    assert report["elapsed_s"] < report["budget_s"]
    assert report["machine"]["importable"]["ray"] is False  # the box has no Ray, as far as the command can tell


def test_figures_say_not_measured_but_their_code_ran(cpu_form):
    _, _, report = cpu_form
    figures = report["figures"]
    for prefix in FIGURE_PREFIXES:
        assert [f for f in figures if f["figure"].startswith(prefix)], prefix
    assert all(f["value"].startswith("not measured") and f["met"] == "-" for f in figures)
    measured_on_cpu = [f for f in figures if "cpu_value" in f]
    assert len(measured_on_cpu) == 10  # 4 trainable_vs_bare, 1 data path, 4 packing, 1 mfu: numbers from the CPU
    assert all(isinstance(f["cpu_value"], float) and math.isfinite(f["cpu_value"]) and f["cpu_value"] > 0
               for f in measured_on_cpu)
    assert {f["target"] for f in figures if f["figure"].startswith("trainable_vs_bare")} == {">= 0.95"}


def test_correctness_checks_meaningful_on_a_cpu_ran_and_passed(cpu_form):
    _, _, report = cpu_form
    outcomes = {c["check"].split("::")[-1]: c for c in report["checks"]}
    assert report["sections"]["pytest"]["result"]["summary"]["failed"] == 0
    for name in CPU_CHECKS_THAT_RUN:
        assert outcomes[name]["outcome"] == "passed", (name, outcomes[name]["detail"])
    skipped = [c for c in outcomes.values() if c["outcome"] == "skipped"]
    assert skipped and all("CUDA" in c["detail"] or "torch.compile" in c["detail"] for c in skipped)
    assert len(outcomes) >= 13


def test_tier2_says_why_it_was_skipped(cpu_form):
    _, _, report = cpu_form
    tier2 = report["sections"]["tier2"]
    assert tier2["status"] == "skipped"
    assert tier2["result"]["missing_modules"] == ["ray", "mlflow", "optuna"]
    row = next(f for f in report["figures"] if f["figure"].startswith("tier2:"))
    assert "no GPU" in row["value"] and "ray, mlflow, optuna not importable" in row["value"]


def test_markdown_has_every_figure_and_check(cpu_form):
    _, out, report = cpu_form
    text = (out / "gpu-check.md").read_text()
    assert "| figure | measured | baseline | ratio | target | met |" in text
    assert all(f["figure"] in text for f in report["figures"])
    assert all(c["check"] in text for c in report["checks"])


def test_the_time_guard_cuts_a_section_and_the_rest_still_run(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "gpucheck", "--out", str(tmp_path / "out"), "--only", "mfu,tier2",
                           "--section-budget", "mfu=0.5", "--grace", "0"], cwd=REPO, env=box_env(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]  # no correctness check failed
    report = json.loads((tmp_path / "out" / "gpu-check.json").read_text())
    assert report["sections"]["mfu"]["status"] == "cut"
    assert "cut by the time guard" in report["sections"]["mfu"]["error"]
    assert report["sections"]["tier2"]["status"] == "skipped"  # a fresh worker ran what was left
    assert any(f["figure"] == "section mfu" and "cut" in f["value"] for f in report["figures"])


def test_gpu_tests_and_their_conftests_import_nothing_beyond_torch_numpy_pytest():
    """At the top level (a GPU box has no Ray, MLflow or Optuna): the standard library, numpy, pytest, torch, and
    the project's own Ray-free modules; the root conftest not even torch."""
    allowed = set(sys.stdlib_module_names) | {"numpy", "pytest", "torch", "tests"}
    files = [REPO / "tests" / "conftest.py", *sorted((REPO / "tests" / "gpu").glob("*.py"))]
    wrong = []
    for file in files:
        for node in ast.parse(file.read_text()).body:
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            top = {n.split(".")[0] for n in names}
            if top - allowed or (file.name == "conftest.py" and file.parent.name == "tests" and "torch" in top):
                wrong.append(f"{file.relative_to(REPO)}: {', '.join(sorted(names))}")
    assert wrong == []


@pytest.mark.parametrize("name,peak", [("NVIDIA H200", 989.0), ("NVIDIA H200 NVL", 835.0), ("NVIDIA H100 80GB HBM3", 989.0),
                                       ("NVIDIA H100 PCIe", 756.0), ("NVIDIA A100-SXM4-80GB", 312.0),
                                       ("NVIDIA L4", 121.0), ("NVIDIA L40S", 362.0), ("NVIDIA A10", 125.0),
                                       ("NVIDIA A10G", None), ("NVIDIA GeForce RTX 4090", 165.0),
                                       ("Tesla V100-SXM2-16GB", 125.0), ("NVIDIA GH200 480GB", 989.0),
                                       ("Some New GPU", None)])
def test_dense_bf16_peaks_by_device_name(name, peak):
    from gpucheck.sections import dense_bf16_peak

    assert dense_bf16_peak(name) == peak


def test_rows_and_exit_code():
    from benchmarks.common import Target
    from gpucheck import report

    row = report.figure_row("x", 96.0, 100.0, target=Target(0.95, at_least=True))
    assert row["ratio"] == pytest.approx(0.96) and row["met"] == "yes"
    assert report.figure_row("x", 90.0, 100.0, target=Target(0.95, at_least=True))["met"] == "no"
    cpu = report.figure_row("x", 90.0, 100.0, target=Target(0.95, at_least=True), measured=False)
    assert cpu["value"] == report.NOT_MEASURED_NO_GPU and cpu["cpu_ratio"] == pytest.approx(0.9)
    unknown_peak = report.figure_row("mfu", 120.0, "peak unknown", target=Target(0.25, at_least=True))
    assert unknown_peak["ratio"] is None and unknown_peak["met"] == "-"
    sections = {"pytest": {"status": "ok", "result": {"checks": [report.check_row("t", "failed", "boom")]}},
                "packing": {"status": "error", "error": "RuntimeError: x", "result": {}}}
    figures, checks = report.collect_rows(sections)
    assert figures[0]["figure"] == "section packing" and "RuntimeError" in figures[0]["value"]
    assert report.exit_code({"failed_checks": report.failed_checks(checks)}) == 1
    assert report.exit_code({"failed_checks": []}) == 0
