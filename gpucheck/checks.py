"""The correctness checks of `make gpu-check`: tests/gpu (marked `gpu`) run through pytest in a subprocess, their
outcomes read back as check rows; and what those tests run in fresh processes (a GPU-memory measurement must not
count what the test process already holds).

    python -m pytest -m gpu -p no:cacheprovider tests/gpu     (GPUCHECK_FORM=cpu runs the CPU-meaningful ones on CPU)

tests/gpu/conftest.py appends each test's outcome and recorded properties to $GPUCHECK_RESULTS (JSON lines).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

from gpucheck.report import check_row
from gpucheck.sections import Budget, Sizes, child_group

REPO = Path(__file__).resolve().parent.parent
RESULTS_FILE = "pytest-gpu.jsonl"
LOG_FILE = "pytest-gpu.log"


def pytest_command() -> list[str]:
    return [sys.executable, "-m", "pytest", "-m", "gpu", "-p", "no:cacheprovider", "-q", "-rfEs", "tests/gpu"]


def run_gpu_tests(sizes: Sizes, budget: Budget, out: Path) -> dict[str, Any]:
    """The pytest section: tests/gpu in a subprocess (its own process group, killed whole at the budget); one
    check row per test; status "failed" when a test failed or pytest could not run them."""
    out.mkdir(parents=True, exist_ok=True)
    results, log = out / RESULTS_FILE, out / LOG_FILE
    results.unlink(missing_ok=True)
    env = {**os.environ, "GPUCHECK_RESULTS": str(results), "GPUCHECK_FORM": sizes.form, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
    with open(log, "w") as f:
        proc = subprocess.Popen(pytest_command(), cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
        with child_group(proc.pid):
            try:
                code, cut = proc.wait(timeout=max(budget.left(), 1.0)), False
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                code, cut = proc.wait(), True
    tests = read_results(results)
    checks = [check_row(t["test"], t["outcome"], t["detail"], duration_s=t["duration_s"],
                        properties=t["properties"]) for t in tests]
    summary = {o: sum(t["outcome"] == o for t in tests) for o in ("passed", "failed", "skipped", "error")}
    out_tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
    result = {"checks": checks, "summary": summary, "returncode": code, "command": " ".join(pytest_command()[1:]),
              "last_line": out_tail[0] if out_tail else ""}
    if cut:
        return {**result, "status": "cut", "error": f"pytest cut by the time guard after {budget.seconds:.0f} s"}
    if not tests or (code != 0 and not summary["failed"] and not summary["error"]):  # e.g. collection failed
        return {**result, "status": "error", "error": f"pytest exited {code} with {len(tests)} test(s) run: "
                                                      f"{result['last_line']}"}
    return {**result, "status": "failed" if summary["failed"] or summary["error"] else "ok"}


def read_results(path: Path) -> list[dict[str, Any]]:
    """Each test's final outcome from the results file: a failed setup or teardown counts as an error."""
    by_test: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return []
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except ValueError:  # the last line of a pytest killed mid-write
            continue
        t = by_test.setdefault(r["test"], {"test": r["test"], "outcome": "passed", "detail": "", "duration_s": 0.0,
                                           "properties": {}})
        t["duration_s"] += r["duration_s"]
        t["properties"].update(r["properties"])
        outcome = r["outcome"] if r["when"] == "call" or r["outcome"] == "skipped" else "error"
        if r["outcome"] != "passed" or r["when"] == "call":
            t["outcome"], t["detail"] = outcome, r["message"] or t["detail"]
    for t in by_test.values():
        if t["outcome"] == "passed" and not t["detail"]:
            t["detail"] = "; ".join(f"{k}={v}" for k, v in t["properties"].items())[:300]
    return list(by_test.values())


# --- run in fresh processes by tests/gpu ---------------------------------------------------------------------------

def packing_module() -> tuple[types.ModuleType, str]:
    """tuner.packing, whose `--gpus-per-trial auto` estimate (measure_peak_bytes, trial_bytes) is Ray-free: it
    imports tuner.spec (and so Ray) only inside its sweep-level functions."""
    import tuner.packing as packing

    return packing, "imported"


def in_fresh_process(fn, *args: Any, timeout: float = 300.0) -> Any:
    """fn(*args) in a freshly spawned process (a Ray worker is one), its result returned here."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply_async(fn, args).get(timeout=timeout)


def estimate_vs_trial(config: dict[str, Any], train_images: int, val_images: int, free_before: int) -> dict:
    """In a fresh process: tuner.packing's `auto` estimate for `config` (its one-step probe, x SAFETY + the CUDA
    context allowance), then the real trial at the share of the GPU that estimate gives it (train_epochs, one
    epoch over a CIFAR-sized set, validation included, data on the GPU when it fits the share, as in a sweep).
    The trial's footprint: its peak reserved memory plus its CUDA context (what the GPU lost while this process
    lived, less what its allocator holds). `free_before`: the GPU's free bytes before this process started."""
    import torch

    from benchmarks.gpu import random_splits
    from trainables import placement
    from trainables.classify import train_epochs
    from trainables.config import TrialConfig

    packing, how = packing_module()
    probe_peak = packing.measure_peak_bytes(config, 10, 32)
    estimate = packing.trial_bytes(probe_peak)
    total = int(torch.cuda.get_device_properties(0).total_memory)
    per_gpu = packing.choose_packing(estimate, total)
    placement.set_trial_budget(gpu_fraction=1.0 / max(per_gpu, 1))
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    data = random_splits(train_images, val_images)
    for _ in train_epochs(TrialConfig.from_dict({**config, "max_epochs": 1}), data, device=torch.device("cuda")):
        pass
    trial_peak = int(torch.cuda.max_memory_reserved())
    free_now, _ = torch.cuda.mem_get_info()
    context = free_before - free_now - int(torch.cuda.memory_reserved())
    return {"probe_peak_bytes": probe_peak, "estimate_bytes": estimate, "trial_peak_reserved_bytes": trial_peak,
            "context_bytes": context, "trial_bytes": trial_peak + context, "trials_per_gpu": per_gpu,
            "data_bytes": int(data.train_x.nbytes + data.val_x.nbytes), "packing_import": how,
            "safety": packing.SAFETY, "context_allowance_bytes": packing.CUDA_CONTEXT_BYTES}
