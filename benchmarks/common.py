"""What every figure shares: the sizes of each measurement, the targets, the machine, the benchmark's own quiet
local Ray instance, and small helpers to time Ray Tune experiments and cut data sets to size.

Nothing here imports Ray or torch at import time: the GPU measurement's spawned processes import this module.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import math
import os
import platform
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

NOT_MEASURED_NO_GPU = "not measured: no GPU"
SKIPPED = "not measured: skipped (--only)"
FIGURES = ("trainable_vs_bare", "augment_vs_torchvision", "per_trial_overhead_s", "asha", "gpu", "folder_decode",
           "data_ready", "driver_memory", "node_memory", "cost_repeatability")
GPU_MODELS = ("cnn_basic", "resnet18", "resnet50", "vit_scratch")


@dataclass(frozen=True)
class Target:
    """What a figure should reach: at least (>=) or at most (<=) `value`."""

    value: float
    at_least: bool
    unit: str = ""

    def met(self, figure: float) -> bool:
        return figure >= self.value if self.at_least else figure <= self.value

    def __str__(self) -> str:  # as the report's `target` column shows it, e.g. ">= 0.95", "<= 1.0 s"
        return f"{'>=' if self.at_least else '<='} {self.value}{self.unit}"


# every target, in one place: the figures' `met` checks, their JSON `target_*` values and the report read these
TARGETS = {
    "trainable_vs_bare": Target(0.95, at_least=True),  # ours / bare images/s (and the real Ray Tune trial's)
    "augment_vs_torchvision": Target(10, at_least=True),  # BatchAugment / torchvision images/s, on CPU
    "per_trial_overhead_s": Target(1.0, at_least=False, unit=" s"),  # seconds a trial adds, our configuration
    "asha_epoch_fraction": Target(0.4, at_least=False),  # epochs of TPE + ASHA / epochs of full random search
    # the driver's peak memory while preparing a folder, beyond its libraries, per decoded training byte
    "driver_rss_per_decoded_byte": Target(1.3, at_least=False),
}


@dataclass(frozen=True)
class Settings:
    """Sizes of every measurement; `quick` is the default CI-sized run, `tiny` only proves the code paths."""

    name: str
    threads: int = 1  # torch threads of single-trial measurements: what a trial holding 1 CPU uses
    concurrency: int = 2  # trials at a time (1 CPU each) in the Ray Tune measurements
    # 1. trainable vs bare loop
    train_model: str = "cnn_basic"
    train_width: float = 1.0
    train_images: int = 384
    train_batch: int = 64
    train_rounds: int = 6  # timed epochs of each loop, interleaved, after one warm-up epoch each
    ray_epochs: int = 7  # epochs of the 1-trial Ray Tune run (the first is warm-up)
    small_width: float = 0.25  # the small model: where per-step costs outside the model show (0 rounds: skip)
    small_images: int = 768
    small_batch: int = 32
    small_rounds: int = 4
    # 2. augmentation
    aug_images: int = 8192
    aug_batch: int = 128
    aug_epochs: int = 2  # timed epochs of each pipeline, after one warm-up epoch each
    # 3. per-trial overhead
    overhead_trials: int = 16
    work_s: float = 0.25  # target duration of the fixed work of one trivial trial (calibrated to an iteration count)
    overhead_train_images: int = 64  # our trainable on tiny data: train images (val: half as many)
    report_calls: int = 10  # tune.report calls timed in the report probe, with and without a checkpoint
    import_repeats: int = 1  # fresh-process import timings: best of this many (0: not measured)
    actor_probes: int = 3  # fresh Ray actors timed
    # 4. ASHA vs random
    asha_trials: int = 16
    asha_epochs: int = 12
    asha_train_images: int = 0  # 0: all of digits' training images
    seed_repeats: int = 2  # each winner retrained with this many other seeds, to judge the noise
    # 5. GPU
    gpu_models: tuple[str, ...] = GPU_MODELS
    gpu_images: int = 16384
    gpu_batch: int = 256
    gpu_epochs: int = 3  # the first is warm-up
    packing: tuple[int, ...] = (1, 2, 4, 8)
    packing_model: str = "resnet18"
    # 6-9. image folders (generated JPEGs, 500x375)
    folder_images: int = 1000  # decode race, data-ready times, node memory
    folder_size: int = 224  # the stored size (imagenet100_ablation's)
    rss_folder_images: tuple[int, ...] = (250, 500, 1000)  # three folder sizes for the driver-memory slope
    node_trials: tuple[int, ...] = (1, 2, 4)  # concurrent trials on the same data
    # 10. cost measurement (multi-objective sweeps): one footprint measured this many times afresh
    cost_model: str = "resnet18"
    cost_width: float = 0.5
    cost_size: int = 32
    cost_batch: int = 64
    cost_repeats: int = 5


SETTINGS = {
    "full": Settings("full", train_images=768, train_rounds=8, ray_epochs=9, aug_images=16384, aug_epochs=3,
                     report_calls=20, import_repeats=3, asha_trials=32, asha_epochs=12, seed_repeats=3,
                     gpu_images=50_000, gpu_epochs=4, folder_images=3000, rss_folder_images=(750, 1500, 3000)),
    "quick": Settings("quick"),
    "tiny": Settings("tiny", train_width=0.25, train_images=64, train_batch=32, train_rounds=1, ray_epochs=2,
                     small_rounds=0,
                     aug_images=512, aug_batch=64, aug_epochs=1, overhead_trials=2, work_s=0.05,
                     overhead_train_images=32, report_calls=2, import_repeats=0, actor_probes=1, asha_trials=3,
                     asha_epochs=2, asha_train_images=96, seed_repeats=1,
                     gpu_models=("cnn_basic",), gpu_images=128, gpu_batch=32, gpu_epochs=2, packing=(1, 2),
                     packing_model="cnn_basic", folder_images=40, folder_size=32, rss_folder_images=(20, 60),
                     node_trials=(1, 2), cost_model="cnn_basic", cost_width=0.25, cost_size=16, cost_batch=4,
                     cost_repeats=2),
}


# --------------------------------------------------------------------------------------------------- data


@contextlib.contextmanager
def torch_threads(n: int):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def subset(data, n_train: int, n_val: int | None = None):
    """The first n_train training (and n_val validation) images of a data set, without its test split."""
    return dataclasses.replace(data.without_test(), train_x=data.train_x[:n_train], train_y=data.train_y[:n_train],
                               **({} if n_val is None else {"val_x": data.val_x[:n_val], "val_y": data.val_y[:n_val]}))


def tiled(data, n: int):
    """n training images: the data set's repeated as often as needed (for throughput, not accuracy)."""
    reps = math.ceil(n / len(data.train_y))
    x = np.concatenate([data.train_x] * reps)[:n]
    y = np.concatenate([data.train_y] * reps)[:n]
    return dataclasses.replace(data.without_test(), train_x=x, train_y=y)


# -------------------------------------------------------------------------------------------- the machine


def machine_info() -> dict[str, Any]:
    import ray
    import timm
    import torch
    import torchvision

    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": model, "cpu_count": os.cpu_count(), "cpus_usable": usable,
        "python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
        "timm": timm.__version__, "ray": ray.__version__, "platform": platform.platform(),
        "cuda": torch.cuda.is_available(),
        # other work on the machine skews every figure: the 1-minute load average when the run starts
        "load_average_start": list(os.getloadavg()),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
    return info


# ------------------------------------------------------------------------------------------------- Ray


def start_ray(num_cpus: int = 2) -> float:
    """One quiet local Ray instance for the whole benchmark (no dashboard); returns its start time in seconds."""
    import ray

    from tuner.cluster import quiet_ray

    quiet_ray()  # no Tune console output besides ours, Optuna's warnings only
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    quiet_logging()
    t0 = time.perf_counter()
    ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False,
             configure_logging=True)
    return time.perf_counter() - t0


def quiet_logging() -> None:
    """Ray's Python loggers and warnings off in this process."""
    for name in ("ray", "ray.tune", "ray.train", "ray.air"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="ray")
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def fit(trainable, *, param_space: dict, tune_config, run_config) -> tuple[Any, float]:
    """Run a Ray Tune experiment; (ResultGrid, wall seconds from building the Tuner to fit's return)."""
    grid, _, wall = fit_timed(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config)
    return grid, wall


def fit_timed(trainable, *, param_space: dict, tune_config, run_config) -> tuple[Any, float, float]:
    """fit, also returning the wall-clock (time.time) start, to place trial timestamps."""
    from ray import tune

    t0_wall, t0 = time.time(), time.perf_counter()
    grid = tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config).fit()
    wall = time.perf_counter() - t0
    errors = [r.error for r in grid if r.error is not None]
    if errors:
        raise RuntimeError(f"{len(errors)} benchmark trial(s) failed; the first: {errors[0]}")
    return grid, t0_wall, wall


def sweep_spec(storage: str, name: str, *, num_samples: int, max_epochs: int, sets: list[str], concurrency: int):
    """A real sweep spec (resnet_rsb on digits, pinned by `sets`), so tune_config/run_config are the sweep's own;
    its experiment folder is `spec.sweep_dir` (storage/name)."""
    from tuner.spec import build_spec

    return build_spec(space="resnet_rsb", dataset="digits", num_samples=num_samples, max_epochs=max_epochs,
                      sets=sets, max_concurrent=concurrency, storage=storage, name=name, seed=0)


def history(result) -> list[dict[str, Any]]:
    """Every result a trial reported, oldest first."""
    df = result.metrics_dataframe
    return [] if df is None else df.to_dict("records")
