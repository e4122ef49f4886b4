"""The benchmark command: every figure measured in one process with one Ray instance, then the report printed
and, with --json, the results written."""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Callable

import benchmarks
from benchmarks import printer
from benchmarks.asha_vs_random import bench_asha_vs_random
from benchmarks.augment_vs_torchvision import bench_augment_vs_torchvision
from benchmarks.cost_repeatability import bench_cost_repeatability
from benchmarks.common import FIGURES, NOT_MEASURED_NO_GPU, SETTINGS, SKIPPED, Settings, machine_info, start_ray
from benchmarks.driver_memory import bench_driver_memory
from benchmarks.folder_decode import bench_data_ready, bench_folder_decode
from benchmarks.gpu import bench_gpu
from benchmarks.node_memory import bench_node_memory
from benchmarks.per_trial_overhead import bench_per_trial_overhead
from benchmarks.trainable_vs_bare import bench_trainable_vs_bare

NEEDS_RAY = {"trainable_vs_bare", "per_trial_overhead_s", "asha"}


def run(settings: Settings, only: tuple[str, ...] = FIGURES, console=None) -> dict[str, Any]:
    """Every measurement in one process, one Ray instance; returns the JSON-ready results."""
    import ray
    import torch
    from rich.console import Console

    from trainables.data import load_dataset

    console = console or Console(stderr=True)
    t_start = time.perf_counter()
    result: dict[str, Any] = {"machine": machine_info(), "settings": dataclasses.asdict(settings)}
    data = load_dataset("digits")
    storage = tempfile.mkdtemp(prefix="sweeps-bench-")
    try:
        result["ray_start_s"] = start_ray(settings.concurrency) if NEEDS_RAY & set(only) else None

        def step(key: str, what: str, fn: Callable[[], Any]) -> Any:
            if key not in only:
                return SKIPPED
            console.print(f"[dim]measuring {what} ...[/dim]")
            t0 = time.perf_counter()
            value = fn()
            console.print(f"[dim]  done in {time.perf_counter() - t0:.1f} s[/dim]")
            return value

        result["trainable_vs_bare"] = step("trainable_vs_bare", "trainable vs bare PyTorch loop",
                                           lambda: bench_trainable_vs_bare(data, settings, storage))
        result["augment_vs_torchvision"] = step("augment_vs_torchvision", "BatchAugment vs torchvision",
                                                lambda: bench_augment_vs_torchvision(data, settings))
        result["per_trial_overhead_s"] = step("per_trial_overhead_s", "per-trial overhead of Ray Tune sweeps",
                                              lambda: bench_per_trial_overhead(data, settings, storage))
        asha = step("asha", "TPE + ASHA vs random search", lambda: bench_asha_vs_random(data, settings, storage))
        if isinstance(asha, dict):
            result["asha_epoch_fraction"] = asha["epoch_fraction"]
            result["asha_best_minus_random_best"] = asha["best_minus_random_best"]
        else:
            result["asha_epoch_fraction"] = result["asha_best_minus_random_best"] = asha
        result["asha_details"] = asha
        if "gpu" in only and torch.cuda.is_available():
            gpu, packing = step("gpu", "GPU throughput and packing", lambda: bench_gpu(data, settings))
        else:
            gpu = packing = NOT_MEASURED_NO_GPU if "gpu" in only else SKIPPED
        result["gpu_images_per_s"], result["packing_speedup"] = gpu, packing
        result["folder_decode"] = step("folder_decode", "folder decode vs torchvision ImageFolder + DataLoader",
                                       lambda: bench_folder_decode(settings, storage))
        result["data_ready"] = step("data_ready", "data-ready time of a first and a second sweep",
                                    lambda: bench_data_ready(settings, storage))
        result["driver_memory"] = step("driver_memory", "driver peak memory at three folder sizes",
                                       lambda: bench_driver_memory(settings, storage))
        result["node_memory"] = step("node_memory", "node memory with 1, 2, 4 trials on the same data",
                                     lambda: bench_node_memory(settings, storage))
        result["cost_repeatability"] = step("cost_repeatability", "repeatability of a footprint's cost measurement",
                                            lambda: bench_cost_repeatability(settings))
    finally:
        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(storage, ignore_errors=True)
    result["total_wall_s"] = time.perf_counter() - t_start
    result["machine"]["load_average_end"] = list(os.getloadavg())
    return result


def parser(prog: str = "python -m benchmarks") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=benchmarks.__doc__.split("\n\n")[0])
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--quick", action="store_true", help="smaller sizes: minutes on a 2-core CPU")
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # tests: proves the code paths
    p.add_argument("--only", metavar="NAME,...",
                   help=f"measure only these (of {', '.join(FIGURES)}); the rest read 'not measured'")
    return p


def main(argv: list[str] | None = None, prog: str = "python -m benchmarks") -> int:
    p = parser(prog)
    args = p.parse_args(argv)
    only = FIGURES
    if args.only:
        only = tuple(n.strip() for n in args.only.split(","))
        unknown = [n for n in only if n not in FIGURES]
        if unknown:
            p.error(f"unknown figure(s) {', '.join(unknown)}; choose from {', '.join(FIGURES)}")
    settings = SETTINGS["tiny" if args.tiny else "quick" if args.quick else "full"]
    from rich.console import Console

    result = run(settings, only)
    printer.print_report(result, Console(width=None if sys.stdout.isatty() else 140))
    if args.json:
        printer.write_json(result, args.json)
    return 0
